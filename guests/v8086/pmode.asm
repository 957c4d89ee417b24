;! ext=com
; pmode.com: leaves virtual-8086 (or real) mode as a DOS extender does. Prints through DOS,
; loads its own GDT (LGDT), sets CR0.PE (MOV CR0, or LMSW with -DUSE_LMSW=1), far-jumps into
; 32-bit protected mode and carries on there: prints through the debugcon port (0xE9), checks
; that it runs in 32-bit code at CPL 0 with PE set, takes a #GP through the IDT it loaded with
; LIDT before the switch (its handler skips the faulting instruction), and ends with isa-debug-exit (0xF4):
; exit code 33 (0x10 << 1 | 1) on success, (1 << 1 | 1) = 3 if a check failed.
;   -DUSE_LMSW=1    set PE with SMSW/LMSW instead of MOV CR0
;   -DGP_CHECK=0    leave out the #GP (for hosts whose KVM cannot IRET in protected mode)
;   -DIRET_PROBE=1  only enter protected mode, IRETD once to the next instruction and exit with 33
;                   (the tests' probe for that KVM limitation)
%ifndef USE_LMSW
%define USE_LMSW 0
%endif
%ifndef GP_CHECK
%define GP_CHECK 1
%endif
%ifndef IRET_PROBE
%define IRET_PROBE 0
%endif
        org 0x100
        mov ah, 0x09
        mov dx, msg_rm
        int 0x21
        ; the program's linear base (CS * 16) is known only at run time: patch the GDTR and the jump
        xor ebx, ebx
        mov bx, cs
        shl ebx, 4
        lea eax, [ebx + gdt]
        mov [gdtr + 2], eax
        lea eax, [ebx + pm32]
        mov [jmp_target], eax
        lea eax, [ebx + idt]
        mov [idtr + 2], eax
        lea eax, [ebx + gp_handler]
        mov [idt + 13 * 8], ax          ; gate offset 15:0
        shr eax, 16
        mov [idt + 13 * 8 + 6], ax      ; gate offset 31:16
        cli
        o32 lgdt [gdtr]
        o32 lidt [idtr]
%if USE_LMSW
        smsw ax
        or al, 1
        lmsw ax
%else
        mov eax, cr0
        or al, 1
        mov cr0, eax
%endif
        ; protected mode, still in 16-bit code: far jump to the 32-bit code segment
        db 0x66, 0xEA
jmp_target: dd 0
        dw 0x08

        bits 32
pm32:   mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        lea esp, [ebx + stack_top]
%if IRET_PROBE
        pushfd
        push cs
        lea eax, [ebx + .back]
        push eax
        iretd
.back:  mov al, 0x10
        out 0xF4, al
        hlt
%endif
        lea esi, [ebx + msg_pm]
        call print
        mov eax, cr0                    ; CPL 0: allowed
        test al, 1
        jz fail
        mov ax, cs
        cmp ax, 0x08
        jne fail
        mov eax, 0x12345678             ; no operand-size prefix: only 32-bit code loads all of EAX
        cmp eax, 0x12345678
        jne fail
%if GP_CHECK
        mov ax, 0x7F8                   ; a selector past the GDT's limit: #GP, to the program's IDT
        mov fs, ax                      ; (gp_handler skips this 2-byte instruction)
        cmp byte [ebx + gp_count], 1
        jne fail
        lea esi, [ebx + msg_gp]
        call print
%endif
        lea esi, [ebx + msg_ok]
        call print
        mov al, 0x10
        out 0xF4, al                    ; isa-debug-exit: code 33
        hlt
fail:   mov al, 0x01
        out 0xF4, al
        hlt
gp_handler:
        inc byte [ebx + gp_count]
        add dword [esp + 4], 2          ; error code at ESP, EIP above it
        add esp, 4
        iretd
print:  mov dx, 0xE9
.next:  lodsb
        test al, al
        jz .done
        out dx, al
        jmp .next
.done:  ret

msg_rm: db "8086 program", 13, 10, "$"
msg_pm: db "protected mode", 10, 0
msg_ok: db "32-bit code at CPL 0", 10, 0
msg_gp: db "#GP handled by the program's IDT", 10, 0
gp_count: db 0
        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF           ; 0x08: 32-bit code, flat, DPL 0
        dq 0x00CF92000000FFFF           ; 0x10: data, flat, DPL 0
gdt_end:
gdtr:   dw gdt_end - gdt - 1
        dd 0
        align 8
idt:    times 13 dq 0
        dw 0, 0x08, 0x8E00, 0           ; 13: #GP, 32-bit interrupt gate (offset patched)
idt_end:
idtr:   dw idt_end - idt - 1
        dd 0
        align 16
        times 256 db 0
stack_top:
