; A data-driven writer for the smartvm-ept tests (real mode, flat at 0x1000).
;
; The host puts a script at 0x800 before the run: records of four words
;   seg, off, value, count
; count = 0: one word store of value at seg:off
; count > 0: rep stosb of the low byte of value, count bytes, from seg:off
; seg = 0 (a one-word record): end of a round: OUT 0x80 (the host harvests)
; seg = 0xFFFF: the end: HLT with interrupts off.
bits 16
org 0x1000

start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    mov si, 0x800
next:
    lodsw
    cmp ax, 0xFFFF
    je finish
    test ax, ax
    jnz write
    out 0x80, al            ; a round is over
    jmp next
write:
    mov es, ax
    lodsw
    mov di, ax
    lodsw
    mov bx, ax              ; value
    lodsw
    test ax, ax
    jnz block
    mov [es:di], bx
    jmp next
block:
    mov cx, ax
    mov al, bl
    rep stosb
    jmp next
finish:
    hlt
    jmp finish
