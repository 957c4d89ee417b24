; Straight-line code to single-step, then a port write.
bits 16
org 0x1000
    nop
    inc ax
    inc ax
    out 0x80, al
    hlt
