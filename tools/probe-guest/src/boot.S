/*
 * Ring-0 part of the probe guest (AT&T syntax, included by boot.rs with global_asm!).
 *
 * On PVM every ring-0 instruction is emulated (~2 us each), so ring 0 only switches to the
 * guest's own tables, which are complete in the image (the linker splits the addresses the
 * descriptors need, see link.ld), and drops to ring 3. Exception handlers run at ring 0
 * too: service calls from ring 3 (sys_entry), anything else on the way to a reset.
 *
 * No braces in this file: global_asm! treats them as operand placeholders.
 */

    .set KERNEL_CS, 0x08
    .set KERNEL_DS, 0x10
    .set USER_CS, 0x18 | 3
    .set USER_DS, 0x20 | 3
    .set TSS_SEL, 0x28
    .set TSS_IOMAP_BASE, 0x68
    .set TSS_IOMAP_BYTES, 8192
    /* Limit covers the 0xff byte that ends the I/O bitmap. */
    .set TSS_LIMIT, TSS_IOMAP_BASE + TSS_IOMAP_BYTES

    .set SERIAL_THR, 0x3f8
    .set SERIAL_LSR, 0x3fd
    .set I8042_CMD, 0x64
    .set I8042_RESET, 0xfe

    /* Ring-0 service calls (see sys_entry; numbers shared with sys.rs). */
    .set SYS_MAGIC, 0x50524f42              /* "PROB" */
    .set SYS_CPUID, 1
    .set SYS_TRIPLE_FAULT, 2

    /* Boot timer (devices/src/abi.rs): the first thing the guest does on either entry is
     * write BOOT_TIMER_ENTRY there, so the VMM (or a QEMU isa-debugcon on the same port)
     * sees the moment the guest's first instruction ran. */
    .set BOOT_TIMER_PORT, 0x440
    .set BOOT_TIMER_ENTRY, 1

    .set AP_BASE, 0x30000
    .set AP_STARTED_OFF, 0xff0

/* ------------------------------------------------------------------------------------- */
    .section .text.boot, "ax", @progbits
    .code64
    .globl _start
_start:
    /* Entered in long mode at CPL0 with RSI = boot_params, per the Linux 64-bit protocol.
     * The first three instructions mark the entry on the boot-timer port. */
    mov $BOOT_TIMER_PORT, %dx
    mov $BOOT_TIMER_ENTRY, %al
    out %al, %dx
start64_marked:
    cli
    cld
    mov %rsi, %r12

    /* SSE for the Rust code (the VMM may already have done this): CR0.EM=0, TS=0, MP=1;
     * CR4.OSFXSR|OSXMMEXCPT. Clear SMEP/SMAP: every page is a user page, ring 0 included. */
    mov %cr0, %rax
    and $~((1 << 2) | (1 << 3)), %eax
    or $(1 << 1), %eax
    mov %rax, %cr0
    mov %cr4, %rax
    or $((1 << 9) | (1 << 10)), %eax
    and $~((1 << 20) | (1 << 21)), %eax
    mov %rax, %cr4

    /* Own page tables: identity map of 4 GiB with the User bit, so ring 3 reaches RAM,
     * MMIO and the LAPIC. */
    mov $boot_pml4, %eax
    mov %rax, %cr3

    /* Same selectors as the VMM's GDT for kernel code/data, so CS/SS need no reload. */
    lgdt gdt_ptr
    mov $TSS_SEL, %ax
    ltr %ax

    lidt idt_ptr

    /* iretq to ring 3 with interrupts off; RDI = boot_params for ring3_entry. */
    mov %r12, %rdi
    pushq $USER_DS
    pushq $user_stack_top
    pushq $0x2
    pushq $USER_CS
    pushq $ring3_entry
    iretq

    /* First ring-3 code: zero .bss natively (the ELF loader does not), then Rust. */
ring3_entry:
    mov %rdi, %r12
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %r12, %rdi
    call probe_main
    ud2

    /* Application processors arrive here from the trampoline, in long mode at CPL0.
     * Count ourselves and halt for good (HLT with interrupts off parks the vCPU). */
    .globl ap_long_mode
ap_long_mode:
    lock incl ap_long_count
1:
    cli
    hlt
    jmp 1b

/* ------------------------------------------------------------------------------------- */
/*
 * PVH entry (Xen's HVM direct boot ABI, which QEMU uses for an ELF -kernel with an
 * XEN_ELFNOTE_PHYS32_ENTRY note): 32-bit protected mode, paging off, flat CS/DS, EBX =
 * physical address of struct hvm_start_info. Mark the entry, keep EBX for ring 3
 * (pvh_start_info, converted to a zero page there: bootparams.rs), turn on long mode with
 * the image's own page tables and GDT, and join the 64-bit path with RSI = 0. capsa uses
 * the 64-bit entry (e_entry) and never comes here.
 */
    .section .text.boot.pvh, "ax", @progbits
    .code32
    .globl pvh_start
pvh_start:
    mov $BOOT_TIMER_PORT, %dx
    mov $BOOT_TIMER_ENTRY, %al
    out %al, %dx
    cli
    mov %ebx, pvh_start_info
    mov %cr4, %eax
    or $0x20, %eax                          /* PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx                   /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    lgdt gdt_ptr                            /* 32-bit base: the GDT is below 4 GiB */
    mov %cr0, %eax
    or $0x80000001, %eax                    /* PG | PE */
    mov %eax, %cr0
    ljmp $0x08, $pvh_long_mode
    .code64
pvh_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %esi, %esi
    jmp start64_marked

    /* The PVH note QEMU looks for (desc: the 32-bit entry address). */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                                 /* namesz: "Xen" + NUL */
    .long 4                                 /* descsz */
    .long 18                                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

/* ------------------------------------------------------------------------------------- */
/* Exception stubs: 16 bytes each from isr_stubs (the IDT in .data.boot relies on it). */
    .section .text.boot.isr, "ax", @progbits
    .balign 512
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    /* Vectors that push an error code: 8, 10-14, 17, 21, 29, 30. Others push 0. */
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

    /* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. A service call (#UD with the
     * magic in RAX) goes to sys_entry; anything else prints one line and resets. */
isr_common:
    cmpq $6, (%rsp)
    jne .Lreport
    push %rax
    shr $32, %rax
    cmp $SYS_MAGIC, %eax
    pop %rax
    jne .Lreport
    add $16, %rsp                           /* drop vector and error code */
    addq $2, (%rsp)                         /* resume after the ud2 */
    jmp sys_entry
.Lreport:
    mov 0(%rsp), %r12
    mov 8(%rsp), %r13
    mov 16(%rsp), %r14
    mov $msg_exc, %esi
    call k_puts
    mov %r12, %rax
    call k_putdec
    mov $msg_rip, %esi
    call k_puts
    mov %r14, %rax
    call k_puthex
    mov $msg_err, %esi
    call k_puts
    mov %r13, %rax
    call k_puthex
    cmp $14, %r12
    jne 1f
    mov $msg_cr2, %esi
    call k_puts
    mov %cr2, %rax
    call k_puthex
1:
    mov $0x0a, %eax
    call k_putc
    mov $I8042_RESET, %al
    out %al, $I8042_CMD
2:
    cli
    hlt
    jmp 2b

    /* k_putc: AL to COM1 once the transmitter is empty. Clobbers RAX, RDX, R8. */
k_putc:
    mov %eax, %r8d
    mov $SERIAL_LSR, %dx
1:
    in %dx, %al
    test $0x20, %al
    jz 1b
    mov %r8d, %eax
    mov $SERIAL_THR, %dx
    out %al, %dx
    ret

    /* k_puts: NUL-terminated string at RSI. */
k_puts:
    movzbl (%rsi), %eax
    test %eax, %eax
    jz 1f
    call k_putc
    inc %rsi
    jmp k_puts
1:
    ret

    /* k_puthex: RAX in hex without leading zeros (at least one digit), "0x" prefix. */
k_puthex:
    mov %rax, %r9
    mov $0x30, %eax
    call k_putc
    mov $0x78, %eax
    call k_putc
    mov $60, %ecx
1:
    test %ecx, %ecx
    jz 2f
    mov %r9, %rax
    shr %cl, %rax
    and $0xf, %eax
    jnz 2f
    sub $4, %ecx
    jmp 1b
2:
    mov %r9, %rax
    shr %cl, %rax
    and $0xf, %eax
    movzbl hex_digits(%rax), %eax
    call k_putc
    sub $4, %ecx
    jns 2b
    ret

    /* k_putdec: RAX in decimal. */
k_putdec:
    mov $10, %r10d
    xor %ecx, %ecx
1:
    xor %edx, %edx
    div %r10
    push %rdx
    inc %ecx
    test %rax, %rax
    jnz 1b
2:
    pop %rax
    add $0x30, %eax
    call k_putc
    dec %ecx
    jnz 2b
    ret

    /*
     * Ring-0 services for ring 3. PVM turns `int n` at ring 3 into #UD, so a service call
     * is a `ud2` with RAX = SYS_MAGIC << 32 | service (args in RDI/RSI); isr_common sends
     * it here with the iretq frame on the stack and RIP already past the ud2.
     * Needed where ring 3 sees the host instead of the VM: on PVM, CPUID at ring 3 runs
     * natively and returns the host's values, not the VMM's KVM_SET_CPUID2 table.
     */
sys_entry:
    cmp $SYS_CPUID, %eax
    jne 1f
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    iretq
1:
    cmp $SYS_TRIPLE_FAULT, %eax
    jne 2f
    /* An empty IDT: the #UD cannot be delivered, nor the #GP and #DF after it. */
    lidt null_idt_ptr
    ud2
2:
    mov $-1, %rax
    iretq

/* ------------------------------------------------------------------------------------- */
    .section .rodata.boot, "a", @progbits
msg_exc:
    .asciz "PROBE-EXCEPTION vector="
msg_rip:
    .asciz " rip="
msg_err:
    .asciz " err="
msg_cr2:
    .asciz " cr2="
hex_digits:
    .ascii "0123456789abcdef"

/* ------------------------------------------------------------------------------------- */
/*
 * AP trampoline, copied by the BSP (at ring 3) to AP_BASE and started with SIPI vector
 * AP_BASE >> 12. Real mode -> count in the trampoline page -> protected mode -> long mode
 * with the BSP's page tables -> ap_long_mode in the image.
 */
    .section .rodata.boot.ap, "a", @progbits
    .globl ap_tramp_start
    .globl ap_tramp_end
    .code16
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lock incl AP_STARTED_OFF
    lgdtl ap_gdtr - ap_tramp_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(AP_BASE + ap_pm32 - ap_tramp_start)
    .code32
ap_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax                          /* PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx                   /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax                    /* PG | PE */
    mov %eax, %cr0
    ljmp $0x18, $ap_long_mode
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff                /* 0x10: data */
    .quad 0x00af9a000000ffff                /* 0x18: 64-bit code */
ap_gdt_end:
ap_gdtr:
    .short ap_gdt_end - ap_gdt - 1
    .long AP_BASE + ap_gdt - ap_tramp_start
ap_tramp_end:
    .code64

/* ------------------------------------------------------------------------------------- */
    .section .data.boot, "aw", @progbits
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff                /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff                /* 0x10 kernel data */
    .quad 0x00affa000000ffff                /* 0x18 user code, 64-bit, DPL3 */
    .quad 0x00cff2000000ffff                /* 0x20 user data, DPL3 */
    /* 0x28: 64-bit available TSS (16 bytes); base pieces come from link.ld. */
    .short TSS_LIMIT & 0xffff
    .short __tss_lo16
    .byte __tss_b16
    .byte 0x89
    .byte (TSS_LIMIT >> 16) & 0xf
    .byte __tss_b24
    .long 0
    .long 0
gdt_end:

    .balign 8
    .short 0, 0, 0
gdt_ptr:
    .short gdt_end - gdt - 1
    .quad gdt

    .balign 16
idt:
    .set vec, 0
    .rept 32
    .short __isr_lo16 + vec * 16
    .short KERNEL_CS
    .if vec == 8
    .byte 1                                 /* #DF on IST1 */
    .else
    .byte 0
    .endif
    .byte 0x8e                              /* present, DPL0, interrupt gate */
    .short __isr_hi16
    .long 0
    .long 0
    .set vec, vec + 1
    .endr
idt_end:

    .balign 8
    .short 0, 0, 0
idt_ptr:
    .short idt_end - idt - 1
    .quad idt

    .balign 8
    .short 0, 0, 0
null_idt_ptr:
    .short 0
    .quad 0

    .balign 4
    .globl ap_long_count
ap_long_count:
    .long 0

    /* hvm_start_info address when entered through pvh_start, else 0 (in .data: .bss is
     * zeroed later, at ring 3). */
    .balign 4
    .globl pvh_start_info
pvh_start_info:
    .long 0

    /* TSS: only RSP0/IST1 and the I/O bitmap matter. PVM ignores IOPL, so ring-3 port
     * I/O needs every port allowed here. */
    .balign 128
    .globl tss
tss:
    .long 0
    .quad kernel_stack_top                  /* RSP0 */
    .quad 0, 0                              /* RSP1, RSP2 */
    .quad 0
    .quad df_stack_top                      /* IST1 */
    .quad 0, 0, 0, 0, 0, 0                  /* IST2-7 */
    .quad 0
    .short 0
    .short TSS_IOMAP_BASE
    .fill TSS_IOMAP_BYTES, 1, 0
    .byte 0xff

/* Identity map of the first 4 GiB with 2 MiB pages, User|RW; 0xd0000000 and up uncached. */
    .section .data.boot.pagetables, "aw", @progbits
    .balign 4096
    .globl boot_pml4
    .globl boot_pdpt
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x0000 + 0x7
    .quad boot_pd + 0x1000 + 0x7
    .quad boot_pd + 0x2000 + 0x7
    .quad boot_pd + 0x3000 + 0x7
    /* 4 GiB and up: filled in at ring 3 on demand (paging.rs, high_pds below). */
    .fill 508, 8, 0
boot_pd:
    .set pde, 0
    .rept 2048
    .if pde >= (0xd0000000 >> 21)
    .quad (pde << 21) | 0x9f                /* P|RW|US|PWT|PCD|PS */
    .else
    .quad (pde << 21) | 0x87                /* P|RW|US|PS */
    .endif
    .set pde, pde + 1
    .endr

/* ------------------------------------------------------------------------------------- */
    /* Spare page directories for RAM above 4 GiB (PVM offers no 1 GiB pages). Not part of
     * .bss, so boot does not pay for zeroing them; paging.rs writes every entry it uses. */
    .section .high_pds, "aw", @nobits
    .balign 4096
    .globl high_pds
high_pds:
    .skip 28 * 4096

    .section .stack, "aw", @nobits
    .balign 4096
    .skip 4096
kernel_stack_top:
    .skip 4096
df_stack_top:
    .skip 32768
    .globl user_stack_top
user_stack_top:

    .section .text, "ax", @progbits
