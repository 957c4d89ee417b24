; 32-bit protected-mode guest: count starts in memory (kept across resets),
; then triple fault: #DE with an empty IDT (limit 0) raises #GP, then #DF,
; then shutdown. After three starts it exits with the count instead.
%include "hypercall.inc"
bits 32
org 0x1000
start:
        mov esp, 0x8000
        inc byte [count]
        cmp byte [count], 3
        jae .done
        lidt [empty_idt]
        xor ecx, ecx
        div ecx
        jmp $
.done:
        movzx ebx, byte [count]
        mov eax, HC_EXIT
        HYPERCALL
        hlt

empty_idt: dw 0
           dd 0
count: db 0
