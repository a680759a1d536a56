/* Shared by start.S, start64.S and kernel.c. */
#ifndef GUEST_H
#define GUEST_H

/* vCPUs the guest supports: one GDT data selector and one per-vCPU slot each. */
#define MAX_CPUS 64

/* Selectors of the guest's GDT: null, flat code, flat data, then MAX_CPUS
 * more flat data descriptors. vCPU i loads GS = CPU_SEL_BASE + 8*i, so an
 * interrupt handler finds its vCPU's index in GS. */
#define CODE_SEL 0x08
#define DATA_SEL 0x10
#define CPU_SEL_BASE 0x18

#define TIMER_VECTOR 0x20 /* 32-bit guest only: no timer in long mode */
#define EXCEPTION_VECTORS 32 /* the x86_64 guest's IDT: exceptions only */

/* Scenarios, chosen with -DSCENARIO=<n> (build.py names them). */
#define SCENARIO_NORMAL 0
#define SCENARIO_BAD_PORT 1
#define SCENARIO_BAD_MMIO 2
#define SCENARIO_TRIPLE_FAULT 3
#define SCENARIO_SPIN 4

#endif
