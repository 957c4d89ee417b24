; sensitive instructions in one mode (BITS = 16, 32 or 64): MSRs, CR access under masks,
; CLTS, LMSW, INVLPG, VMCALL, CPUID, port and string I/O, OUT then HLT in one block
%ifndef BITS
%define BITS 16
%endif
bits BITS
org 0x1000
start:
    mov ecx, 0x1234
    rdmsr                       ; RDMSR exit: the handler answers EDX:EAX
    mov [0x600], eax
    mov [0x604], edx
    mov ecx, 0x1235
    mov eax, 0x11111111
    mov edx, 0x22222222
    wrmsr                       ; WRMSR exit (or #GP if the handler faults it)
%if BITS == 64
    mov rax, cr0                ; CD is host-owned: the read shadow answers
%else
    mov eax, cr0
%endif
    mov [0x608], eax
%if BITS == 64
    mov cr0, rax                ; equals the shadow in owned bits: no exit
    bts rax, 30
    mov cr0, rax                ; sets CD: CR_ACCESS exit (MOV to CR0 from RAX)
%else
    mov cr0, eax
    bts eax, 30
    mov cr0, eax
%endif
    clts                        ; TS owned and set in the shadow: exit
    mov ax, 0x0001
    lmsw ax                     ; TS differs from the shadow: exit
    invlpg [0x3000]             ; INVLPG exiting
    vmcall                      ; VMCALL exit
    xor eax, eax
    cpuid                       ; CPUID exit
    mov al, 0x5a
    mov dx, 0x80
    out dx, al                  ; DX form
    out 0x81, al                ; immediate form
    cld
    mov esi, msg
    mov ecx, 5
    mov dx, 0xe9
    rep outsb                   ; one exit, count 5
    mov edi, 0x700
    mov ecx, 3
    mov dx, 0x90
    rep insw                    ; one exit, count 3, the handler fills the words
    mov [0x610], ecx
    mov al, 0x77
    out 0x82, al
    hlt                         ; right after the OUT, in the same block
    mov al, 0x99
    out 0x83, al
    hlt
msg: db "hello"
