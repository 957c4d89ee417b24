; virtual-8086 mode under a 32-bit monitor: port I/O (TSS I/O bitmap), RDMSR (#GP to the monitor),
; INT 0x21 through a DPL-3 gate (delivery from v8086 with a stack switch), CPUID, VMCALL (#UD)
bits 32
org 0x1000
start:
    lgdt [gdtr]
    lidt [idtr]
    mov ax, 0x18
    ltr ax
    mov esp, 0x9000
    push dword 0                ; GS
    push dword 0                ; FS
    push dword 0                ; DS
    push dword 0                ; ES
    push dword 0                ; SS
    push dword 0x7000           ; SP
    push dword 0x23002          ; EFLAGS: VM, IOPL 3
    push dword 0                ; CS
    push dword v86code          ; IP
    iretd
gp_handler:                     ; #GP from v8086: skip the 2-byte instruction
    inc dword [0x640]
    add dword [esp + 4], 2
    add esp, 4
    iretd
int21_handler:                  ; entered from v8086: record the saved segment frame, return
    mov eax, [esp + 20]         ; saved ES (after EIP, CS, EFLAGS, ESP, SS)
    mov [0x644], eax
    mov [0x648], ss
    mov [0x64c], esp
    iretd
ud_handler:
    inc dword [0x650]
    add dword [esp], 3          ; skip VMCALL
    iretd
bits 16
v86code:
    mov al, 0x11
    out 0x80, al                ; I/O exit from v8086
    mov ecx, 0x10
    rdmsr                       ; CPL 3: #GP before any exit
    int 0x21                    ; IOPL 3: through the IDT to ring 0
    xor eax, eax
    cpuid                       ; exits in every mode
    vmcall                      ; #UD in v8086 mode
    mov al, 0x22
    out 0x81, al
    jmp $
bits 32
align 8
gdt: dq 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF
gdt_tss: dw tss_end - tss - 1, tss
         db 0, 0x89, 0, 0
gdt_end:
gdtr: dw gdt_end - gdt - 1
      dd gdt
align 8
idt: times 6 dq 0
    dw ud_handler, 0x08, 0x8E00, 0       ; 6: #UD
    times 6 dq 0
    dw gp_handler, 0x08, 0x8E00, 0       ; 13: #GP
    times 0x21 - 14 dq 0
    dw int21_handler, 0x08, 0xEE00, 0    ; 0x21: DPL 3 interrupt gate
idt_end:
idtr: dw idt_end - idt - 1
      dd idt
align 16
tss: dd 0
     dd 0x8000, 0x10            ; ESP0, SS0
     times 22 dd 0
     dw 0, iomap - tss
iomap: times 128 db 0           ; ports 0-0x3ff allowed
     db 0xff
tss_end:
