; A multiboot v1 test kernel of the kind kvm-unit-tests builds.
;
; Built with `nasm -f bin`: by default the file is an ELF32 executable whose
; ELF and program headers are written out by hand below (one PT_LOAD segment
; at 1 MiB); with -DAOUT=1 it is a plain binary loaded through the multiboot
; header's a.out-kludge address fields instead.
;
; It checks EAX=0x2BADB002, then prints on the 0x3F8 UART:
;   "multiboot: ok", the command line, the boot-loader name,
;   "mem_upper: yes", each module's text (kvm-unit-tests' environment), and
;   "mmap: <n> entries"
; and ends through isa-debug-exit (port 0xF4) with EXIT_CODE (default 0x21),
; or with 0x7F when it was not entered by a multiboot loader.

bits 32

%ifndef EXIT_CODE
%define EXIT_CODE 0x21
%endif

LOAD_ADDR   equ 0x100000
MB_MAGIC    equ 0x1BADB002
%ifdef AOUT
MB_FLAGS    equ 0x00010003
%else
MB_FLAGS    equ 0x00000003
%endif
UART        equ 0x3F8
DEBUG_EXIT  equ 0xF4
BSS_SIZE    equ 0x2000

org LOAD_ADDR

file_start:
%ifndef AOUT
elf_header:
    db 0x7F, "ELF", 1, 1, 1, 0          ; ELFCLASS32, little endian, version 1
    times 8 db 0
    dw 2                                ; e_type: ET_EXEC
    dw 3                                ; e_machine: EM_386
    dd 1                                ; e_version
    dd _start                           ; e_entry
    dd program_header - file_start      ; e_phoff
    dd 0                                ; e_shoff
    dd 0                                ; e_flags
    dw 52                               ; e_ehsize
    dw 32                               ; e_phentsize
    dw 1                                ; e_phnum
    dw 40, 0, 0                         ; e_shentsize, e_shnum, e_shstrndx
program_header:
    dd 1                                ; p_type: PT_LOAD
    dd 0                                ; p_offset
    dd LOAD_ADDR                        ; p_vaddr
    dd LOAD_ADDR                        ; p_paddr
    dd file_end - file_start            ; p_filesz
    dd bss_end - file_start             ; p_memsz
    dd 7                                ; p_flags: RWX
    dd 0x1000                           ; p_align
%endif

align 4
multiboot_header:
    dd MB_MAGIC
    dd MB_FLAGS
    dd -(MB_MAGIC + MB_FLAGS)
%ifdef AOUT
    dd multiboot_header                 ; header_addr
    dd file_start                       ; load_addr
    dd file_end                         ; load_end_addr
    dd bss_end                          ; bss_end_addr
    dd _start                           ; entry_addr
%endif

_start:
    mov esp, stack_top
    cmp eax, 0x2BADB002
    jne not_multiboot
    mov [mbi], ebx

    mov esi, msg_ok
    call puts

    mov ebx, [mbi]
    test dword [ebx], 1 << 2            ; command line present?
    jz .no_cmdline
    mov esi, msg_cmdline
    call puts
    mov esi, [ebx + 16]
    call puts
    call newline
.no_cmdline:
    mov ebx, [mbi]
    test dword [ebx], 1 << 9            ; boot-loader name
    jz .no_name
    mov esi, msg_loader
    call puts
    mov esi, [ebx + 64]
    call puts
    call newline
.no_name:
    mov ebx, [mbi]
    test dword [ebx], 1                 ; mem_lower / mem_upper
    jz .no_mem
    cmp dword [ebx + 8], 1024           ; at least 1 MiB above 1 MiB
    jb .no_mem
    mov esi, msg_mem
    call puts
.no_mem:
    ; modules: print each one's contents (the environment text)
    mov ebx, [mbi]
    test dword [ebx], 1 << 3
    jz .no_mods
    mov ecx, [ebx + 20]                 ; mods_count
    mov edi, [ebx + 24]                 ; mods_addr
.next_mod:
    jecxz .no_mods
    push ecx
    mov esi, msg_module
    call puts
    mov esi, [edi]                      ; mod_start
    mov edx, [edi + 4]                  ; mod_end
.mod_byte:
    cmp esi, edx
    jae .mod_done
    lodsb
    call putc
    jmp .mod_byte
.mod_done:
    pop ecx
    add edi, 16
    dec ecx
    jmp .next_mod
.no_mods:
    ; memory map: count the entries
    mov ebx, [mbi]
    test dword [ebx], 1 << 6
    jz .finish
    mov esi, [ebx + 48]                 ; mmap_addr
    mov edx, esi
    add edx, [ebx + 44]                 ; + mmap_length
    xor ecx, ecx
.mmap_next:
    cmp esi, edx
    jae .mmap_done
    inc ecx
    add esi, [esi]                      ; size (excludes itself)
    add esi, 4
    jmp .mmap_next
.mmap_done:
    mov esi, msg_mmap
    call puts
    mov al, cl
    add al, '0'
    call putc
    mov esi, msg_entries
    call puts
    ; bss must have been cleared by the loader
    cmp dword [bss_canary], 0
    jne .bss_dirty
.finish:
    mov al, EXIT_CODE
    out DEBUG_EXIT, al
    jmp halt
.bss_dirty:
    mov esi, msg_bss
    call puts
    mov al, 0x7E
    out DEBUG_EXIT, al
    jmp halt

not_multiboot:
    mov esi, msg_not_mb
    call puts
    mov al, 0x7F
    out DEBUG_EXIT, al
halt:
    cli
    hlt
    jmp halt

; puts: print the NUL-terminated string at ESI
puts:
    push eax
.loop:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .loop
.done:
    pop eax
    ret

newline:
    mov al, 10
putc:
    push edx
    mov dx, UART
    out dx, al
    pop edx
    ret

msg_ok:      db "multiboot: ok", 10, 0
msg_cmdline: db "cmdline: ", 0
msg_loader:  db "loader: ", 0
msg_mem:     db "mem_upper: yes", 10, 0
msg_module:  db "module: ", 0
msg_mmap:    db "mmap: ", 0
msg_entries: db " entries", 10, 0
msg_not_mb:  db "not entered by a multiboot loader", 10, 0
msg_bss:     db "bss not cleared", 10, 0

align 4
file_end:

; bss (not in the file; the loader zeroes it)
mbi:        equ file_end
bss_canary: equ file_end + 4
stack_top:  equ file_end + BSS_SIZE
bss_end:    equ file_end + BSS_SIZE
