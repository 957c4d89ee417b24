; SMP progress: count in a loop, writing the counter to the port given in BX every 16 iterations.
bits 16
org 0x1000
    xor cx, cx
again:
    inc cx
    test cx, 0x0F
    jnz again
    mov dx, bx
    mov ax, cx
    out dx, ax
    jmp again
