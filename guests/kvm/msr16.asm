; RDMSR/WRMSR of an MSR the test intercepts (index MSR, default a made-up one KVM does not know).
; A #GP (the handler refused the access) lands in gp_handler, which writes port 0x83.
%ifndef MSR
%define MSR 0x4b564d77
%endif
bits 16
org 0x1000
    xor ax, ax
    mov ds, ax
    mov word [13*4], gp_handler
    mov word [13*4+2], 0
    mov ecx, MSR
    mov eax, 0x11223344
    mov edx, 0x55667788
    wrmsr                   ; WRMSR exit (value edx:eax)
    rdmsr                   ; RDMSR exit (the handler answers)
    mov [0x600], eax
    mov [0x604], edx
    out 0x80, al
    hlt
gp_handler:
    out 0x83, al
    hlt
