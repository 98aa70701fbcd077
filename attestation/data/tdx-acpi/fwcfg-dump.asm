; fw_cfg dumper: a 64 KiB "-bios" image. First programs the q35 chipset registers that QEMU's
; ACPI tables are built from, with the values OVMF/TDVF's PlatformInitLib writes before it reads
; the tables (MCH PCIEXBAR = 0xB0000000, 256 MiB, enabled: MCFG and the PCI holes; ICH9 PMBASE =
; 0x600 with ACPI decoding on: the FADT's PM blocks). Then streams the fw_cfg file directory and
; the content of every file, in directory order, to the debugcon port 0xe9, and triple-faults
; (QEMU with -no-reboot exits).
bits 16
org 0
start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov dx, 0xcf8          ; MCH 00:00.0 reg 0x64: PCIEXBAR high = 0
    mov eax, 0x80000064
    out dx, eax
    mov dx, 0xcfc
    xor eax, eax
    out dx, eax
    mov dx, 0xcf8          ; reg 0x60: PCIEXBAR = 0xB0000000 | length 256 MiB | enable
    mov eax, 0x80000060
    out dx, eax
    mov dx, 0xcfc
    mov eax, 0xb0000001
    out dx, eax
    mov dx, 0xcf8          ; ICH9 LPC 00:1f.0 reg 0x40: PMBASE = 0x600
    mov eax, 0x8000f840
    out dx, eax
    mov dx, 0xcfc
    mov eax, 0x600
    out dx, eax
    mov dx, 0xcf8          ; reg 0x44: ACPI_CNTL, ACPI_EN
    mov eax, 0x8000f844
    out dx, eax
    mov dx, 0xcfc
    mov al, 0x80
    out dx, al
    mov dx, 0x510          ; select FW_CFG_FILE_DIR
    mov ax, 0x19
    out dx, ax
    mov dx, 0x511
    mov di, 0x1000
    mov cx, 4
.count:
    in al, dx
    stosb
    out 0xe9, al
    loop .count
    mov ah, [0x1002]       ; entry count, big-endian (below 65536)
    mov al, [0x1003]
    mov bx, ax
    mov cx, ax
    shl cx, 6
    jz .done
.dir:
    in al, dx
    stosb
    out 0xe9, al
    loop .dir
    mov si, 0x1004
.file:
    test bx, bx
    jz .done
    mov ah, [si+4]         ; selector, big-endian
    mov al, [si+5]
    mov dx, 0x510
    out dx, ax
    mov dx, 0x511
    mov eax, [si]          ; size, big-endian
    bswap eax
    mov ecx, eax
    test ecx, ecx
    jz .next
.byte:
    in al, dx
    out 0xe9, al
    dec ecx
    jnz .byte
.next:
    add si, 64
    dec bx
    jmp .file
.done:
    xor eax, eax           ; empty IDT at 0x900, then an interrupt: triple fault
    mov [0x900], eax
    mov [0x904], ax
    lidt [0x900]
    int3
    hlt
    jmp .done
    times 0xfff0 - ($ - $$) db 0
reset:
    jmp 0xf000:start
    times 0x10000 - ($ - $$) db 0
