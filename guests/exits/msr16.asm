; Real-mode guest: MSR accesses through the VMM's MSR store.
; An IVT handler for #GP (vector 13) counts faults and skips the 2-byte
; RDMSR/WRMSR. Results go to the console as dwords: for each step, the value
; read (EDX:EAX as two dwords) and the fault count so far; exit code 0.
%include "hypercall.inc"
bits 16
org 0x1000
start:
        mov sp, 0x8000
        xor ax, ax
        mov ds, ax
        mov word [13 * 4], gp_handler
        mov word [13 * 4 + 2], 0
        mov di, out
        ; 1: MTRRcap (read-only, 0x508)
        mov ecx, 0xfe
        call read
        ; 2: MISC_ENABLE reset value
        mov ecx, 0x1a0
        call read
        ; 3: MTRR default type: write 0xc06 (E, FE, WB), read back
        mov ecx, 0x2ff
        mov eax, 0xc06
        xor edx, edx
        wrmsr
        call read
        ; 4: MTRR default type with an invalid memory type (2): #GP, value kept
        mov ecx, 0x2ff
        mov eax, 0xc02
        xor edx, edx
        wrmsr
        call read
        ; 5: an MSR nobody implements: #GP on read and on write
        mov ecx, 0x4b564d99
        call read
        mov ecx, 0x4b564d99
        wrmsr
        call read_faults
        ; 6: MTRRcap is read-only: #GP
        mov ecx, 0xfe
        wrmsr
        call read_faults
        ; 7: a variable MTRR pair
        mov ecx, 0x200
        mov eax, 0x80006
        xor edx, edx
        wrmsr
        call read
%ifdef PLUGIN_MSR
        ; 8: an MSR a plugin defined (the test plugin reads back the value written + 1)
        mov ecx, PLUGIN_MSR
        mov eax, 41
        xor edx, edx
        wrmsr
        call read
%endif
        mov eax, HC_CONSOLE_WRITE
        mov ebx, out
        movzx ecx, di
        sub ecx, out
        HYPERCALL
        HC2 HC_EXIT, 0, 0
        hlt

; read MSR ecx; store eax, edx, faults
read:
        xor eax, eax
        xor edx, edx
        rdmsr
        mov [di], eax
        mov [di + 4], edx
        mov eax, [faults]
        mov [di + 8], eax
        add di, 12
        ret

read_faults:
        mov dword [di], 0
        mov dword [di + 4], 0
        mov eax, [faults]
        mov [di + 8], eax
        add di, 12
        ret

gp_handler:
        push bp
        mov bp, sp
        add word [bp + 2], 2        ; skip RDMSR/WRMSR (0F 32 / 0F 30)
        pop bp
        inc dword [faults]
        iret

align 4
faults: dd 0
align 16
out:
