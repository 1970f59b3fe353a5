/*
 * fuzz: libFuzzer targets for every parser of data that comes from IMDS.
 *
 * Each target defines LLVMFuzzerTestOneInput(). Built with clang's
 * -fsanitize=fuzzer it fuzzes (tests/fuzz/run); linked with replay.c
 * instead it is a plain program that runs the inputs it is given (the seed
 * corpus and every crash found so far) once each, and so is a unit test
 * that any compiler builds (tests/fuzz/meson.build).
 *
 * A target checks the parser's contract on every input and calls
 * fuzz_fail() when it is broken, so that a wrong answer is a crash too.
 */
#ifndef IMDSFS_FUZZ_H
#define IMDSFS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define fuzz_check(cond)                                                                 \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                  \
			abort();                                                         \
		}                                                                        \
	} while (0)

#endif
