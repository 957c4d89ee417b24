; real mode: one REP OUTSB to the debug console (port 0xe9), then isa-debug-exit
bits 16
org 0x1000
    cld
    mov si, msg
    mov cx, msg_end - msg
    mov dx, 0xe9
    rep outsb
    mov al, 0
    out 0xf4, al
    hlt
msg: db "hello from rep outsb", 10
msg_end:
