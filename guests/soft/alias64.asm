; one physical code page reached through two linear aliases (long mode): a sensitive
; instruction must exit through both. The test maps linear 4 GiB + x onto physical x.
bits 64
%ifndef ALIAS
%define ALIAS 0x100000000
%endif
org 0x1000
start:
    mov ecx, 0x1234
    mov rax, sub_
    call rax                    ; through the identity mapping
    mov rax, ALIAS + sub_
    call rax                    ; through the alias: the same bytes, another linear page
    mov al, 1
    out 0xf4, al
    hlt
    align 4096
sub_:
    rdmsr                       ; RDMSR exit on each path
    ret
