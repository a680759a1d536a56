/*
 * The test guest's kernel: freestanding C, no libc, no libgcc (so no 64-bit
 * division in the 32-bit build). start.S (32-bit) or start64.S (x86_64, long
 * mode) calls kmain(cpu, ncpus) on every vCPU; see README.md. The same source
 * builds for both: pointers go through uintptr_t, sizes are size_t.
 */
#include <stdint.h>

#include "guest.h"

typedef __SIZE_TYPE__ size_t; /* unsigned int with -m32, unsigned long with -m64 */

#ifdef __x86_64__
_Static_assert(sizeof(void *) == 8, "the x86_64 build runs in long mode");
#else
_Static_assert(sizeof(void *) == 4, "the i386 build runs in 32-bit protected mode");
#endif

#ifndef ITERATIONS
#define ITERATIONS 100000u
#endif
#ifndef SCENARIO
#define SCENARIO SCENARIO_NORMAL
#endif

#define COM1 0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20

#define COUNTER_ADD 0x510
#define COUNTER_LO 0x510
#define COUNTER_HI 0x514

#define TIMER_PERIOD 0x540
#define TIMER_EOI 0x544
#define TIMER_PERIOD_US 2000u
#define TIMER_TICKS 3u

#define DISK_SECTOR 0x560
#define DISK_BUFFER 0x564
#define DISK_COUNT 0x568
#define DISK_COMMAND 0x56C
#define DISK_STATUS 0x56C
#define DISK_SIZE 0x570
#define DISK_READ 1u
#define DISK_WRITE 2u
#define SECTOR_SIZE 512u
#define DISK_SECTORS 8u /* per vCPU: sectors [cpu*8, cpu*8+8) */

#define MAILBOX ((volatile uint32_t *)(uintptr_t)0xD0000000u)
#define MAILBOX_WORD 0xC0DE0000u

#define BAD_PORT 0x1234
#define BAD_MMIO ((volatile uint32_t *)(uintptr_t)0xE0000000u)

void kmain(uint32_t cpu, uint32_t ncpus);
void guest_exception(uint32_t vector, uintptr_t error, uintptr_t ip);

#ifndef __x86_64__
/* In start.S: incremented by the timer handler (no timer in long mode). */
extern volatile uint32_t guest_ticks[MAX_CPUS];
#endif

/* Shared by all vCPUs; explicitly in .data so that loading the image zeroes them. */
__attribute__((section(".data"))) static volatile uint32_t print_lock;  /* 1: held */
__attribute__((section(".data"))) static volatile uint32_t print_owner; /* holder's cpu + 1 */
__attribute__((section(".data"))) static volatile uint32_t barrier_arrived;

/* DMA buffers, per vCPU: outside the image (.bss is NOLOAD), never assumed zero. */
static uint8_t disk_out[MAX_CPUS][DISK_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
static uint8_t disk_in[MAX_CPUS][DISK_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));

/* gcc may emit calls to these even when freestanding. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" : : : "memory");
}

static inline uint32_t xchg(volatile uint32_t *p, uint32_t value)
{
    __asm__ volatile("xchgl %0, %1" : "+r"(value), "+m"(*p) : : "memory");
    return value;
}

static inline uint32_t atomic_add_return(volatile uint32_t *p, uint32_t value)
{
    uint32_t old = value;
    __asm__ volatile("lock xaddl %0, %1" : "+r"(old), "+m"(*p) : : "memory");
    return old + value;
}

static __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" : : : "memory");
}

/* ---- console: whole lines under print_lock ---- */

static void lock_console(uint32_t cpu)
{
    while (xchg(&print_lock, 1) != 0) {
        while (print_lock != 0)
            cpu_relax();
    }
    print_owner = cpu + 1;
}

static void unlock_console(void)
{
    print_owner = 0;
    xchg(&print_lock, 0);
}

static void con_putc(char c)
{
    while (!(inb(COM1_LSR) & LSR_THRE))
        cpu_relax();
    outb(COM1, (uint8_t)c);
}

static void con_puts(const char *s)
{
    while (*s)
        con_putc(*s++);
}

static void put_u32(uint32_t v)
{
    char buf[11];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        con_putc(buf[--n]);
}

/* hi:lo in decimal, dividing by 10 through 16-bit pieces (no 64-bit division). */
static void put_u64(uint32_t hi, uint32_t lo)
{
    char buf[21];
    int n = 0;
    do {
        uint32_t r = hi % 10;
        hi /= 10;
        uint32_t a = (r << 16) | (lo >> 16);
        uint32_t qa = a / 10;
        r = a % 10;
        uint32_t b = (r << 16) | (lo & 0xFFFF);
        uint32_t qb = b / 10;
        r = b % 10;
        lo = (qa << 16) | qb;
        buf[n++] = (char)('0' + r);
    } while (hi || lo);
    while (n)
        con_putc(buf[--n]);
}

/* "vCPU <cpu>: <text>" as one line. */
static void say(uint32_t cpu, const char *text)
{
    lock_console(cpu);
    con_puts("vCPU ");
    put_u32(cpu);
    con_puts(": ");
    con_puts(text);
    con_putc('\n');
    unlock_console();
}

/* "vCPU <cpu>: <text> <value><suffix>" as one line. */
static void say_value(uint32_t cpu, const char *text, uint32_t value, const char *suffix)
{
    lock_console(cpu);
    con_puts("vCPU ");
    put_u32(cpu);
    con_puts(": ");
    con_puts(text);
    con_putc(' ');
    put_u32(value);
    con_puts(suffix);
    con_putc('\n');
    unlock_console();
}

static uint32_t this_cpu(void)
{
    uint32_t gs = 0;
    __asm__ volatile("movw %%gs, %w0" : "+r"(gs));
    return (gs - CPU_SEL_BASE) >> 3;
}

/* From start.S or start64.S, vectors 0-31, interrupts off: report and stop this vCPU. */
void guest_exception(uint32_t vector, uintptr_t error, uintptr_t ip)
{
    uint32_t cpu = this_cpu();
    (void)error;
    (void)ip;
    if (print_owner == cpu + 1)
        con_putc('\n'); /* faulted while printing: end that line, keep the lock */
    else
        lock_console(cpu);
    con_puts("vCPU ");
    put_u32(cpu);
    con_puts(": exception ");
    put_u32(vector);
    con_putc('\n');
    unlock_console();
    halt_forever();
}

/* ---- the steps of the normal scenario (unused by the others) ---- */

#define STEP static __attribute__((unused))

#ifndef __x86_64__
/* Not in long mode: returning from the interrupt there needs iretq, which
 * KVM's instruction emulator (kvm_pvm) does not implement. */
STEP void timer_test(uint32_t cpu)
{
    guest_ticks[cpu] = 0;
    outl(TIMER_PERIOD, TIMER_PERIOD_US);
    /* IF is set only inside "sti; hlt": sti's one-instruction shadow means a
     * tick cannot slip in between the check and the hlt. */
    while (guest_ticks[cpu] < TIMER_TICKS)
        __asm__ volatile("sti; hlt; cli" : : : "memory");
    outl(TIMER_PERIOD, 0);
    __asm__ volatile("cli" : : : "memory");
    lock_console(cpu);
    con_puts("vCPU ");
    put_u32(cpu);
    con_puts(": ");
    put_u32(guest_ticks[cpu]);
    con_puts(" ticks\n");
    unlock_console();
}
#endif

STEP void count(uint32_t iterations)
{
    for (uint32_t k = 0; k < iterations; k++)
        outl(COUNTER_ADD, 1);
}

STEP uint8_t pattern(uint32_t sector, uint32_t k)
{
    return (uint8_t)(sector * 31 + k + 7);
}

STEP void disk_test(uint32_t cpu)
{
    uint8_t *out = disk_out[cpu];
    uint8_t *in = disk_in[cpu];
    uint32_t first = cpu * DISK_SECTORS;
    uint32_t size = inl(DISK_SIZE);
    int ok = 1;

    if (size < first + DISK_SECTORS) {
        say_value(cpu, "disk too small:", size, " sectors");
        ok = 0;
    }
    if (ok) {
        for (uint32_t s = 0; s < DISK_SECTORS; s++)
            for (uint32_t k = 0; k < SECTOR_SIZE; k++)
                out[s * SECTOR_SIZE + k] = pattern(first + s, k);
        outl(DISK_SECTOR, first);
        outl(DISK_BUFFER, (uint32_t)(uintptr_t)out);
        outl(DISK_COUNT, DISK_SECTORS);
        outl(DISK_COMMAND, DISK_WRITE);
        uint32_t status = inl(DISK_STATUS);
        if (status != 0) {
            say_value(cpu, "disk write status", status, "");
            ok = 0;
        }
    }
    if (ok) {
        memset(in, 0, DISK_SECTORS * SECTOR_SIZE);
        outl(DISK_SECTOR, first);
        outl(DISK_BUFFER, (uint32_t)(uintptr_t)in);
        outl(DISK_COUNT, DISK_SECTORS);
        outl(DISK_COMMAND, DISK_READ);
        uint32_t status = inl(DISK_STATUS);
        if (status != 0) {
            say_value(cpu, "disk read status", status, "");
            ok = 0;
        }
    }
    if (ok) {
        for (uint32_t s = 0; s < DISK_SECTORS && ok; s++)
            for (uint32_t k = 0; k < SECTOR_SIZE; k++)
                if (in[s * SECTOR_SIZE + k] != pattern(first + s, k)) {
                    ok = 0;
                    break;
                }
    }
    say(cpu, ok ? "disk ok" : "disk MISMATCH");
}

STEP void barrier(uint32_t ncpus)
{
    atomic_add_return(&barrier_arrived, 1);
    while (barrier_arrived < ncpus)
        cpu_relax();
}

STEP void report_totals(uint32_t cpu, uint32_t ncpus)
{
    uint32_t lo = inl(COUNTER_LO);
    uint32_t hi = inl(COUNTER_HI);
    lock_console(cpu);
    con_puts("counter ");
    put_u64(hi, lo);
    con_putc('\n');
    unlock_console();
    lock_console(cpu);
    con_puts("all ");
    put_u32(ncpus);
    con_puts(" vCPUs done\n");
    unlock_console();
}

void kmain(uint32_t cpu, uint32_t ncpus)
{
    lock_console(cpu);
    con_puts("hello from vCPU ");
    put_u32(cpu);
    con_puts(" of ");
    put_u32(ncpus);
    con_putc('\n');
    unlock_console();
#ifdef __x86_64__
    say(cpu, "long mode");
#endif

#if SCENARIO == SCENARIO_NORMAL
#ifdef __x86_64__
    say(cpu, "no timer in long mode");
#else
    timer_test(cpu);
#endif
    count(ITERATIONS);
    disk_test(cpu);
    *MAILBOX = MAILBOX_WORD | cpu;
    barrier(ncpus);
    if (cpu == 0)
        report_totals(cpu, ncpus);
#elif SCENARIO == SCENARIO_BAD_PORT
    outb(BAD_PORT, 0x42);
    say(cpu, "survived");
#elif SCENARIO == SCENARIO_BAD_MMIO
    *BAD_MMIO = 0xBAD00000u | cpu;
    say(cpu, "survived");
#elif SCENARIO == SCENARIO_TRIPLE_FAULT
    static const struct {
        uint16_t limit;
        uintptr_t base; /* 32 bits, or 64 in long mode */
    } __attribute__((packed)) empty_idt = {0, 0};
    /* #UD -> #GP (vector beyond the limit) -> #DF -> triple fault: KVM_EXIT_SHUTDOWN.
     * ud2 rather than int3: KVM's instruction emulator (used where the guest
     * is emulated, e.g. kvm_pvm) cannot deliver a protected-mode INT n. */
    __asm__ volatile("lidt %0; ud2" : : "m"(empty_idt) : "memory");
    say(cpu, "survived");
#elif SCENARIO == SCENARIO_SPIN
    for (;;)
        outl(COUNTER_ADD, 1);
#else
#error "unknown SCENARIO"
#endif

    say(cpu, "halt");
    halt_forever();
}
