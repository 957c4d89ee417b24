; sensitive.com: exercises the instructions the monitor emulates and checks their results the way
; the SDM defines them: CLI/STI and PUSHF/POPF on IF and CF, PUSHFD/POPFD, INT n to a handler the
; program installs in its IVT (and its IRET), INT3 to a handler, and REP OUTSB to the debug console
; port 0xE9 (trapped by the I/O permission bitmap when the experiment says so). Exits with 0, or
; with the number of the check that failed.
        org 0x100
        cli
        pushf
        pop ax
        test ax, 0x0200
        mov bl, 1
        jnz fail                ; IF must read 0 after CLI
        sti
        pushf
        pop ax
        test ax, 0x0200
        mov bl, 2
        jz fail                 ; and 1 after STI
        push word 0x0001        ; POPF loads CF
        popf
        mov bl, 3
        jnc fail
        push word 0x0200        ; ... and clears it again
        popf
        mov bl, 4
        jc fail
        pushfd
        pop eax
        test eax, 0x20000       ; the program never sees VM
        mov bl, 5
        jnz fail
        push eax
        popfd
        mov ah, 0x09
        mov dx, msg_flags
        int 0x21
        ; install INT 60h and INT 3 handlers straight into the IVT
        xor ax, ax
        mov es, ax
        cli
        mov word [es:0x60 * 4], int60
        mov [es:0x60 * 4 + 2], cs
        mov word [es:3 * 4], int3
        mov [es:3 * 4 + 2], cs
        sti
        mov cx, 0x1234
        stc
        int 0x60
        mov bl, 7
        jnc fail                ; IRET restored the caller's flags (CF set)
        mov bl, 6
        cmp cx, 0x4321
        jne fail
        pushf
        pop ax
        test ax, 0x0200
        mov bl, 8
        jz fail                 ; and its IF
        int3
        mov bl, 9
        cmp dx, 0x3333
        jne fail
        mov ah, 0x09
        mov dx, msg_int
        int 0x21
        push cs
        pop es
        mov si, msg_string
        mov cx, msg_string_len
        mov dx, 0xE9
        cld
        rep outsb
        mov bl, 10
        test cx, cx
        jnz fail
        mov ax, 0x4C00
        int 0x21
fail:   mov al, bl
        mov ah, 0x4C
        int 0x21
int60:  pushf
        pop ax
        test ax, 0x0200         ; INT cleared IF for the handler
        jnz .bad
        mov cx, 0x4321
        iret
.bad:   mov cx, 0xBAD
        iret
int3:   mov dx, 0x3333
        iret
msg_flags: db "flags ok", 13, 10, "$"
msg_int:   db "int ok", 13, 10, "$"
msg_string: db "string ok", 13, 10
msg_string_len equ $ - msg_string
