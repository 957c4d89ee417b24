; 64-bit: INT 0x40 through an IDT gate with IST1; the handler reports RSP and returns
bits 64
org 0x1000
start:
    lidt [idtr]
    mov rax, tss
    mov [gdt_tss + 2], ax
    shr rax, 16
    mov [gdt_tss + 4], al
    mov [gdt_tss + 7], ah
    lgdt [gdtr]
    mov ax, 0x18
    ltr ax
    mov rsp, 0x8000
    int 0x40
    mov [0x620], rax            ; RSP the handler saw
    out 0x80, al
    hlt
handler:
    mov rax, rsp
    iretq
align 8
gdt: dq 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF
gdt_tss: dw 0x67, 0
         db 0, 0x89, 0, 0
         dq 0
gdt_end:
gdtr: dw gdt_end - gdt - 1
      dq gdt
align 16
idt: times 0x40 dq 0, 0
    dw handler, 0x08
    db 1, 0x8E                  ; IST 1, 64-bit interrupt gate
    dw 0
    dd 0, 0
idt_end:
idtr: dw idt_end - idt - 1
      dq idt
align 16
tss: dd 0
     dq 0x7000, 0, 0            ; RSP0..2
     dq 0                       ; reserved
     dq 0x9000                  ; IST1
     times 6 dq 0
     dq 0
     dw 0, 0x68
