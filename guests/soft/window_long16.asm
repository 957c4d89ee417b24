; real mode: an interrupt window awaited across a long stretch with IF=0, then STI
bits 16
org 0x1000
start:
    cli
    xor ax, ax
    xor bx, bx
    out 0x80, al                ; the test asks for interrupt-window exiting here (IF=0)
    mov ecx, 100000
.spin:
    push dword 0x0002           ; memory traffic and flags loads, IF stays clear
    popfd
    dec ecx
    jnz .spin
    sti
    inc ax                      ; in the STI shadow
    inc bx                      ; the window opens before this instruction
    hlt
