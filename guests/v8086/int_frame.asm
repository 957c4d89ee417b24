; int_frame.com: INT n frames the monitor must read and write exactly (every route).
; Exits with 0 if all checks pass, else with the number of the first failed check.
;   1. INT 11h with SP = 2: the INT frame wraps around the stack segment; AX = the BDA
;      equipment word, CF (set before) survives, SP is back to 2 afterwards.
;   2. INT 16h AH=01h with no key: the service sets ZF in the flags the IRET restores.
;   3. INT 21h AH=35h: the service changes ES (ES:BX = the vector's handler, the monitor's stub).
        org 0x100
        mov [saved_sp], sp
        ; -- 1 ---------------------------------------------------------------------------
        mov al, 1
        mov [check], al
        mov sp, 2
        stc
        int 0x11
        mov bx, sp
        mov sp, [saved_sp]
        jnc fail
        cmp bx, 2
        jne fail
        push ds
        mov bx, 0x40
        mov ds, bx
        mov bx, [0x10]
        pop ds
        cmp ax, bx
        jne fail
        ; -- 2 ---------------------------------------------------------------------------
        mov byte [check], 2
        mov ah, 0x01
        or ah, ah               ; ZF = 0 before the call
        int 0x16
        jnz fail
        ; -- 3 ---------------------------------------------------------------------------
        mov byte [check], 3
        mov ax, 0x3512
        xor bx, bx
        mov es, bx
        int 0x21
        mov ax, es
        cmp ax, 0xF000
        jne fail
        cmp bx, 0xE000 + 0x12 * 4
        jne fail
        mov ax, 0x4C00
        int 0x21
fail:   mov al, [check]
        mov ah, 0x4C
        int 0x21
saved_sp: dw 0
check:  db 0
