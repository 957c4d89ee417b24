; disk.img: a boot sector that reads sectors of its own disk image through INT 13h:
; sector 2 with a CHS read (AH=02h), sector 3 with an LBA read (AH=42h), and prints both.
        org 0x7C00
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        mov [drive], dl
        mov ax, 0x0201          ; read 1 sector
        mov cx, 0x0002          ; cylinder 0, sector 2
        xor dh, dh              ; head 0
        mov dl, [drive]
        mov bx, 0x8000
        int 0x13
        jc fail
        mov si, 0x8000
        call print
        mov ah, 0x41            ; extensions present?
        mov bx, 0x55AA
        mov dl, [drive]
        int 0x13
        jc fail
        cmp bx, 0xAA55
        jne fail
        mov ah, 0x42
        mov dl, [drive]
        mov si, dap
        int 0x13
        jc fail
        mov si, 0x9000
        call print
        mov ah, 0x02            ; a CHS read past the end must fail with CF=1
        mov al, 1
        mov cx, 0x0040 | 63     ; cylinder 256: beyond this disk
        mov dl, [drive]
        mov bx, 0x8000
        int 0x13
        jnc fail
        mov si, okmsg
        call print
        cli
        hlt
fail:   mov si, failmsg
        call print
        cli
        hlt
print:  lodsb
        test al, al
        jz .out
        mov ah, 0x0E
        int 0x10
        jmp print
.out:   ret
drive:  db 0
dap:    db 0x10, 0
        dw 1                    ; one sector
        dw 0x9000, 0x0000       ; to 0000:9000
        dq 2                    ; LBA 2 (the third sector)
okmsg:  db "disk ok", 13, 10, 0
failmsg: db "disk FAILED", 13, 10, 0
        times 510 - ($ - $$) db 0
        dw 0xAA55
; sector 2 (LBA 1)
        db "CHS read: sector 2", 13, 10, 0
        times 1024 - ($ - $$) db 0
; sector 3 (LBA 2)
        db "LBA read: sector 3", 13, 10, 0
        times 1536 - ($ - $$) db 0
