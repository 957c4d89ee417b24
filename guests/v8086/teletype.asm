; teletype.img: a boot sector that prints through the BIOS teletype (INT 10h AH=0Eh),
; reads the cursor back (INT 10h AH=03h) and stops with CLI; HLT.
        org 0x7C00
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7C00
        mov si, message
        call print
        mov ah, 0x03            ; get cursor: row in DH, column in DL
        xor bh, bh
        int 0x10
        mov al, dh
        add al, '0'
        mov ah, 0x0E
        int 0x10                ; prints the row (1: after one CR LF)
        mov si, done
        call print
        cli
        hlt
print:  lodsb
        test al, al
        jz .out
        mov ah, 0x0E
        mov bx, 0x0007
        int 0x10
        jmp print
.out:   ret
message: db "Booted through BIOS teletype", 13, 10, 0
done:    db " row", 13, 10, 0
        times 510 - ($ - $$) db 0
        dw 0xAA55
