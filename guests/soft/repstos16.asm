; real mode: REP STOSB of four bytes to 0000:3000 (the test write-protects that page), then OUT 0x80, HLT
bits 16
org 0x1000
start:
    xor ax, ax
    mov es, ax
    mov di, 0x3000
    mov cx, 4
    mov al, 0xAB
    cld
    rep stosb
    out 0x80, al
    hlt
