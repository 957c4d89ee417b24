; 32-bit protected mode: RDMSR IA32_PAT, RDMSR of an unknown MSR (#GP, counted by the guest),
; WRMSR IA32_SYSENTER_CS; prints "pat=<hex> gp=<n>" on the debug console and exits
bits 32
org 0x1000
start:
    lidt [idtr]
    mov ecx, 0x277
    rdmsr
    mov [pat_lo], eax
    mov [pat_hi], edx
    mov ecx, 0x12345678
    rdmsr                       ; #GP from the MSR store
    mov ecx, 0x174
    mov eax, 0x10
    xor edx, edx
    wrmsr
    mov esi, s_pat
    call puts
    mov eax, [pat_hi]
    call puthex
    mov eax, [pat_lo]
    call puthex
    mov esi, s_gp
    call puts
    mov al, [gp_count]
    add al, '0'
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    mov al, 0
    out 0xf4, al
    hlt
puts:
    lodsb
    test al, al
    jz .done
    out 0xe9, al
    jmp puts
.done:
    ret
puthex:                         ; eax as 8 hex digits
    mov ecx, 8
.l: rol eax, 4
    mov ebx, eax
    and ebx, 0xf
    mov bl, [hex + ebx]
    xchg eax, ebx
    out 0xe9, al
    xchg eax, ebx
    loop .l
    ret
gp_handler:
    inc byte [gp_count]
    add dword [esp + 4], 2      ; skip the RDMSR
    add esp, 4
    iretd
hex: db "0123456789abcdef"
s_pat: db "pat=", 0
s_gp: db " gp=", 0
gp_count: db 0
align 4
pat_lo: dd 0
pat_hi: dd 0
align 8
idt: times 13 dq 0
    dw gp_handler, 0x08, 0x8E00, 0
idt_end:
idtr: dw idt_end - idt - 1
      dd idt
