; Spin without ever exiting (only a kick or a timer gets the vCPU out).
bits 16
org 0x3000
    out 0x80, al
spin:
    jmp spin
