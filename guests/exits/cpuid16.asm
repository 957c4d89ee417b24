; Real-mode guest: run CPUID for each (leaf, subleaf) in the table and write
; the results (EAX, EBX, ECX, EDX per entry, little-endian) to the console
; through the hypercall doorbell, then exit with code 0.
%include "hypercall.inc"
bits 16
org 0x1000
start:
        mov sp, 0x8000
        mov si, leaves
        mov di, results
.next:
        cmp si, leaves_end
        jae .done
        mov eax, [si]
        mov ecx, [si + 4]
        push si
        push di
        cpuid
        pop di
        pop si
        mov [di], eax
        mov [di + 4], ebx
        mov [di + 8], ecx
        mov [di + 12], edx
        add si, 8
        add di, 16
        jmp .next
.done:
        mov eax, HC_CONSOLE_WRITE
        mov ebx, results
        mov ecx, (leaves_end - leaves) * 2
        HYPERCALL
        HC2 HC_EXIT, 0, 0
        hlt

align 4
leaves:
        dd 0, 0
        dd 1, 0
        dd 2, 0
        dd 4, 0
        dd 6, 0
        dd 7, 0
        dd 7, 1
        dd 0xb, 0
        dd 0xb, 1
        dd 0xb, 5
        dd 0xc, 0
        dd 0x40000000, 0
        dd 0x40000001, 0
        dd 0x40000010, 0
        dd 0x80000000, 0
        dd 0x80000001, 0
        dd 0x80000002, 0
        dd 0x80000003, 0
        dd 0x80000004, 0
        dd 0x80000007, 0
        dd 0x80000008, 0
        dd 0x80000009, 0
        dd 0x12345678, 0
leaves_end:
align 16
results:
