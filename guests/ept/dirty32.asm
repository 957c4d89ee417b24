; Dirty-log benchmark guest (flat 32-bit protected mode, loaded at 0x10000).
;
; Each round writes one dword to PAGES pages, STRIDE bytes apart, starting at
; BASE, then OUTs to port 0x80 (the host harvests the dirty log); after ROUNDS
; rounds it halts. Round r writes the value r+1, so every round dirties the
; same known set of pages again.
bits 32
org 0x10000

%ifndef PAGES
%define PAGES 512
%endif
%ifndef STRIDE
%define STRIDE 0x20000
%endif
%ifndef BASE
%define BASE 0x200000
%endif
%ifndef ROUNDS
%define ROUNDS 6
%endif

start:
    cli
    mov edx, 1
round:
    mov edi, BASE
    mov ecx, PAGES
.page:
    mov [edi], edx
    add edi, STRIDE
    dec ecx
    jnz .page
    out 0x80, al
    inc edx
    cmp edx, ROUNDS + 1
    jne round
halt:
    hlt
    jmp halt
