; interrupt-window: STI opens it one instruction later, POPF and IRET open it at once
bits 16
org 0x1000
start:
    cli
    out 0x80, al            ; the VMM asks for interrupt-window exiting here
    mov ax, 1
    mov bx, 2
    sti
    inc ax                  ; in the STI shadow
    inc bx                  ; window exit with RIP here
    cli
    out 0x81, al
    pushf
    pop cx
    or cx, 0x200
    push cx
    popf                    ; IF=1, no shadow
    inc ax                  ; window exit with RIP here
    cli
    out 0x82, al
    pushf
    pop cx
    or cx, 0x200
    push cx
    push cs
    push word after_iret
    iret
after_iret:
    inc ax                  ; window exit with RIP here
    hlt
