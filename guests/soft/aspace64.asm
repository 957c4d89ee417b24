; one linear code page mapped to a different physical page in each of two address spaces
; (long mode): the sensitive instruction of each mapping exits, also after switching back.
; The test builds the page tables: CR3_A maps linear X onto physical 0x3000, CR3_B onto 0x4000.
bits 64
%ifndef X
%define X 0x40000000
%endif
%ifndef CR3_A
%define CR3_A 0x100000
%endif
%ifndef CR3_B
%define CR3_B 0x120000
%endif
org 0x1000
start:
    mov ecx, 0x1234
    mov rbx, X
    call rbx                    ; space A: the RDMSR at X
    mov rax, CR3_B
    mov cr3, rax
    call rbx                    ; space B: the RDMSR at X + 0x10
    mov rax, CR3_A
    mov cr3, rax
    call rbx                    ; space A again: its translation is reused, the hook must still be there
    mov al, 1
    out 0xf4, al
    hlt
    times 0x3000 - 0x1000 - ($ - $$) db 0
page_a:                         ; physical 0x3000
    rdmsr
    ret
    times 0x4000 - 0x1000 - ($ - $$) db 0
page_b:                         ; physical 0x4000
    times 16 nop
    rdmsr
    ret
