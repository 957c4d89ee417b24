; INVD (always exits under VMX) and WBINVD (exits with the WBINVD-exiting control),
; loaded flat at 0x1000 in real mode. EAX counts the instructions that completed.
bits 16
org 0x1000
    cli
    xor eax, eax
    invd
    inc eax
    wbinvd
    inc eax
    hlt
