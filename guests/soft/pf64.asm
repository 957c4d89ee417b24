; 64-bit with paging: page faults handled by the guest's own #PF handler, with exits in between.
; Each round leaves the CPU loop (OUT 0x80, two CPUIDs) and then faults on an unmapped address
; (5 GiB); the handler counts the fault in R12 and skips the 2-byte load. OUT 0x81 reports the
; count, then HLT.
bits 64
org 0x1000
ROUNDS equ 6
start:
    lidt [idtr]
    xor r12d, r12d
    mov rbx, 0x140000000        ; beyond the 4 GiB the page tables map
    mov esi, ROUNDS
.round:
    out 0x80, al
    cpuid
    cpuid
    mov al, [rbx]               ; #PF; the handler skips these 2 bytes
    dec esi
    jnz .round
    mov eax, r12d
    out 0x81, al
    hlt
pf_handler:
    inc r12
    add qword [rsp + 8], 2      ; past the faulting load (the error code is at [rsp])
    add rsp, 8
    iretq
align 16
idt: times 14 dq 0, 0
    dw pf_handler, 0x08
    db 0, 0x8E                  ; 64-bit interrupt gate
    dw 0
    dd 0, 0
idt_end:
idtr: dw idt_end - idt - 1
      dq idt
