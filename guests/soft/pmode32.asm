; 32-bit protected-mode guest with its own IDT: takes a #GP and a #PF in its handlers and carries on
bits 32
org 0x1000
start:
    lidt [idtr]
    ; #GP: load a selector beyond the GDT
    mov ax, 0x7f8
    mov ds, ax            ; -> gp_handler skips this
    mov ax, 0x10
    mov ds, ax
    ; turn on paging with a 4 MiB identity page, then touch an unmapped page
    mov eax, pd
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10          ; PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, [0x00800000] ; #PF -> pf_handler maps it
    mov [0x6000], eax
    mov al, [gp_count]
    out 0x80, al
    mov al, [pf_count]
    out 0x81, al
    hlt
gp_handler:
    inc byte [gp_count]
    add dword [esp+4], 2  ; skip the faulting mov ds,ax (error code at esp, EIP at esp+4)
    add esp, 4
    iretd
pf_handler:
    inc byte [pf_count]
    mov eax, cr2
    mov [0x6004], eax
    mov dword [pd + 2*4], 0x00000083   ; map 8 MiB..12 MiB -> phys 0 (4 MiB page)
    mov eax, cr3
    mov cr3, eax
    add esp, 4
    iretd
gp_count: db 0
pf_count: db 0
align 8
idt:
    times 13 dq 0
    dw gp_handler, 0x08, 0x8e00, 0      ; 13: #GP interrupt gate
    dw pf_handler, 0x08, 0x8e00, 0      ; 14: #PF
idt_end:
idtr: dw idt_end - idt - 1
      dd idt
align 4096
pd:
    dd 0x00000083         ; 0..4 MiB identity, 4 MiB page
    times 1023 dd 0
