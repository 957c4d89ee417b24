; User-space PIC path: an interrupt window after STI, and external interrupt 0x20 delivered through the IVT.
bits 16
org 0x1000
    xor ax, ax
    mov ds, ax
    mov word [0x20*4], handler
    mov word [0x20*4+2], 0
    cli
    out 0x80, al            ; IF=0: no window
    sti
    nop
    out 0x81, al
    hlt                     ; halted with IF=1
    out 0x85, al
    hlt
handler:
    out 0x84, al
    iret
