; OUT round-trip benchmark: COUNT OUTs to port 0x80, then OUT 0xf4
%ifndef COUNT
%define COUNT 100000
%endif
bits 16
org 0x7c00
    mov ecx, COUNT
.l: out 0x80, al
    dec ecx
    jnz .l
    out 0xf4, al
    hlt
