; compute loop for the benchmark: ITER iterations of a 10-instruction body, then OUT 0xf4 (isa-debug-exit)
%ifndef ITER
%define ITER 1000000
%endif
bits 16
org 0x7c00
    cli
    mov ecx, ITER
    xor eax, eax
    mov ebx, 0x12345
    mov edx, 0x9e37
.loop:
    add eax, ebx
    xor ebx, eax
    rol eax, 5
    imul edx, edx, 13
    add edx, ecx
    sub ebx, edx
    shr eax, 1
    or ebx, 3
    dec ecx
    jnz .loop
    mov al, 0
    out 0xf4, al
    hlt
    jmp $
times 510-($-$$) db 0
dw 0xaa55
