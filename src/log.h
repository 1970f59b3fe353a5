/*
 * log: one line per event, to stderr in the foreground and to syslog once
 * daemonized. Every module logs through here so that a test can read one
 * stream, and so that nothing secret is printed by accident: callers pass
 * paths and errors, never bodies or tokens.
 */
#ifndef IMDSFS_LOG_H
#define IMDSFS_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/* Switch from stderr to syslog (after daemonizing). */
void log_use_syslog(void);
void log_set_debug(bool on);
bool log_debug_enabled(void);

void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...)	 log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...)	 log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                   \
	do {                                                                             \
		if (log_debug_enabled())                                                 \
			log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                           \
	} while (0)

#endif
