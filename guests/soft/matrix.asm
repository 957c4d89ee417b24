; One sensitive instruction (KIND) in one mode (BITS = 16, 32 or 64), then HLT at `done`.
; The exit-control matrix test runs it with the kind's control set (the instruction exits)
; and clear (it runs and the guest reaches `done`, or its own handler for an exception).
%ifndef BITS
%define BITS 16
%endif
%ifndef KIND
%define KIND 0
%endif
%define IDT 0x900
bits BITS
org 0x1000
start:
    ; the guest's own #UD handler (vector 6): writes 0x66 to [0x500] and halts
%if BITS == 16
    mov word [6 * 4], handler
    mov word [6 * 4 + 2], 0
%elif BITS == 32
    mov eax, handler
    mov [IDT + 6 * 8], ax
    mov word [IDT + 6 * 8 + 2], 0x08
    mov word [IDT + 6 * 8 + 4], 0x8E00
    shr eax, 16
    mov [IDT + 6 * 8 + 6], ax
    lidt [idtr]
%else
    mov rax, handler
    mov [IDT + 6 * 16], ax
    mov word [IDT + 6 * 16 + 2], 0x08
    mov word [IDT + 6 * 16 + 4], 0x8E00
    shr rax, 16
    mov [IDT + 6 * 16 + 6], ax
    shr rax, 16
    mov [IDT + 6 * 16 + 8], eax
    mov dword [IDT + 6 * 16 + 12], 0
    lidt [idtr]
%endif
    mov ecx, 0x174              ; IA32_SYSENTER_CS for the MSR kinds
    xor eax, eax
    xor edx, edx
%if KIND == 1                   ; exception bitmap
    ud2
%elif KIND == 2                 ; HLT exiting
    hlt
%elif KIND == 3                 ; I/O (unconditional or bitmap)
    out 0x80, al
%elif KIND == 4                 ; RDMSR (MSR bitmaps)
    rdmsr
%elif KIND == 5                 ; WRMSR (MSR bitmaps)
    mov eax, 0x10
    wrmsr
%elif KIND == 6                 ; RDTSC exiting
    rdtsc
%elif KIND == 7                 ; CR0 guest/host mask: set CD
 %if BITS == 64
    mov rax, cr0
    bts rax, 30
    mov cr0, rax
 %else
    mov eax, cr0
    bts eax, 30
    mov cr0, eax
 %endif
%elif KIND == 8                 ; CR4 guest/host mask: toggle OSFXSR
 %if BITS == 64
    mov rax, cr4
    btc rax, 9
    mov cr4, rax
 %else
    mov eax, cr4
    btc eax, 9
    mov cr4, eax
 %endif
%elif KIND == 9                 ; CR3 store exiting
 %if BITS == 64
    mov rax, cr3
 %else
    mov eax, cr3
 %endif
%elif KIND == 10                ; CR3 load exiting
 %if BITS == 64
    mov rax, cr3
    mov cr3, rax
 %else
    mov eax, cr3
    mov cr3, eax
 %endif
%elif KIND == 11                ; INVLPG exiting
    invlpg [0x3000]
%elif KIND == 12                ; MOV-DR exiting
 %if BITS == 64
    mov rax, dr7
 %else
    mov eax, dr7
 %endif
%elif KIND == 13                ; WBINVD exiting (secondary control)
    wbinvd
%elif KIND == 14                ; interrupt-window exiting: opens after STI's shadow
    sti
    nop
    nop
    cli
%elif KIND == 15                ; CPUID: always exits
    cpuid
%elif KIND == 16                ; VMCALL: always exits
    vmcall
%elif KIND == 17                ; INVD: always exits
    invd
%elif KIND == 18                ; unbacked guest-physical memory: always an EPT violation
    mov eax, [0x40000000]
%endif
done:
    hlt
    jmp done
handler:
    mov byte [0x500], 0x66
    hlt
    jmp handler
%if BITS == 32
idtr: dw 8 * 32 - 1
      dd IDT
%elif BITS == 64
idtr: dw 16 * 32 - 1
      dq IDT
%endif
