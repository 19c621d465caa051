/* tests/unit/test_config.c — configuration: defaults, every source, precedence (flag > env > file >
 * default), value syntax, and refusals that name the key, the source and what is accepted. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/error.h"

static char path[64];

/* Writes `text` to a fresh temp file named in `path`. */
static const char *write_conf(const char *text)
{
    snprintf(path, sizeof path, "/tmp/memattn-cfg-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static int teardown_file(void **state)
{
    (void)state;
    if (path[0])
        unlink(path);
    path[0] = '\0';
    return 0;
}

static int load(cfg_config *c, const char *const *argv_tail, const char *const *env, char *err, size_t errlen)
{
    char *argv[32] = { "memattnd" };
    int argc = 1;
    for (int i = 0; argv_tail && argv_tail[i]; i++)
        argv[argc++] = (char *)argv_tail[i];
    argv[argc] = NULL;
    return cfg_load(c, argc, argv, (char *const *)env, err, errlen);
}

static void test_defaults(void **state)
{
    (void)state;
    cfg_config c;
    char err[256];
    assert_int_equal(load(&c, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(c.action, CFG_RUN);
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_string_equal(c.data_dir, "./data");
    assert_string_equal(c.token, "");
    assert_int_equal(c.threads, (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_int_equal(c.max_body, 1 << 20);
    assert_int_equal(c.max_header_bytes, 16 << 10);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.log_level, CFG_LOG_INFO);
    assert_int_equal(c.log_format, CFG_LOG_TEXT);
}

static void test_precedence(void **state)
{
    (void)state;
    const char *file = write_conf("# comment\n\n  threads = 3   # trailing comment\nmax-body = 2K\n"
                                  "max_uri=100\nlog_level = debug\ntoken = \"from#file\"  # c\nnode_id = n7\n");
    cfg_config c;
    char err[256];
    /* file only */
    const char *a1[] = { "--config", file, NULL };
    assert_int_equal(load(&c, a1, NULL, err, sizeof err), 0);
    assert_int_equal(c.threads, 3);
    assert_int_equal(c.max_body, 2048);
    assert_int_equal(c.max_uri, 100);
    assert_int_equal(c.log_level, CFG_LOG_DEBUG);
    assert_string_equal(c.token, "from#file");
    assert_string_equal(c.node_id, "n7");
    /* env over file; other MEMATTN_ variables and unrelated ones are ignored */
    const char *env[] = { "MEMATTN_THREADS=5", "MEMATTN_MAX_URI=200", "MEMATTN_BIN=/x", "PATH=/bin", NULL };
    assert_int_equal(load(&c, a1, env, err, sizeof err), 0);
    assert_int_equal(c.threads, 5);
    assert_int_equal(c.max_uri, 200);
    assert_int_equal(c.max_body, 2048);
    /* flags over env, both spellings */
    const char *a2[] = { "--config", file, "--threads", "7", "--max-uri=300", NULL };
    assert_int_equal(load(&c, a2, env, err, sizeof err), 0);
    assert_int_equal(c.threads, 7);
    assert_int_equal(c.max_uri, 300);
    assert_int_equal(c.max_body, 2048);
    assert_int_equal(c.log_level, CFG_LOG_DEBUG);
    /* the config file named by the environment */
    char envcfg[96];
    snprintf(envcfg, sizeof envcfg, "MEMATTN_CONFIG=%s", file);
    const char *env2[] = { envcfg, NULL };
    assert_int_equal(load(&c, NULL, env2, err, sizeof err), 0);
    assert_int_equal(c.threads, 3);
    assert_string_equal(c.config_file, file);
}

static void test_value_syntax(void **state)
{
    (void)state;
    cfg_config c;
    char err[256];
    const char *a[] = { "--max-body", "3M", "--memory", "2g", "--header-timeout", "250ms", "--idle-timeout", "2m",
                        "--drain-timeout", "0", "--body-timeout", "7", "--listen", "[::1]:0", "--log-format", "json",
                        "--data", "/tmp/x y", NULL };
    assert_int_equal(load(&c, a, NULL, err, sizeof err), 0);
    assert_int_equal(c.max_body, 3u << 20);
    assert_int_equal(c.memory, 2ull << 30);
    assert_int_equal(c.header_timeout_ms, 250);
    assert_int_equal(c.idle_timeout_ms, 120000);
    assert_int_equal(c.drain_timeout_ms, 0);
    assert_int_equal(c.body_timeout_ms, 7000);
    assert_string_equal(c.listen, "[::1]:0");
    assert_int_equal(c.log_format, CFG_LOG_JSON);
    assert_string_equal(c.data_dir, "/tmp/x y");
    const char *b[] = { "--listen", "localhost:9", NULL };
    assert_int_equal(load(&c, b, NULL, err, sizeof err), 0);
    assert_string_equal(c.node_id, "");
    /* --node-id: flag, environment and (test_precedence) file; the flag wins over the environment. */
    const char *n[] = { "--node-id", "n1.rack-2:a_b", NULL };
    assert_int_equal(load(&c, n, (const char *[]){ "MEMATTN_NODE_ID=env", NULL }, err, sizeof err), 0);
    assert_string_equal(c.node_id, "n1.rack-2:a_b");
    assert_int_equal(load(&c, NULL, (const char *[]){ "MEMATTN_NODE_ID=env", NULL }, err, sizeof err), 0);
    assert_string_equal(c.node_id, "env");
    /* --store-check: background by default, open when asked (flag or environment). */
    assert_int_equal(c.store_check, CFG_CHECK_BACKGROUND);
    assert_int_equal(load(&c, (const char *[]){ "--store-check", "open", NULL }, NULL, err, sizeof err), 0);
    assert_int_equal(c.store_check, CFG_CHECK_OPEN);
    assert_int_equal(load(&c, NULL, (const char *[]){ "MEMATTN_STORE_CHECK=background", NULL }, err, sizeof err), 0);
    assert_int_equal(c.store_check, CFG_CHECK_BACKGROUND);
}

static void test_help_version(void **state)
{
    (void)state;
    cfg_config c;
    char err[256];
    const char *h[] = { "--threads", "bogus", "--help", NULL };   /* help wins over a bad value */
    assert_int_equal(load(&c, h, NULL, err, sizeof err), 0);
    assert_int_equal(c.action, CFG_HELP);
    const char *v[] = { "--version", NULL };
    assert_int_equal(load(&c, v, NULL, err, sizeof err), 0);
    assert_int_equal(c.action, CFG_VERSION);
}

/* Each refusal: MA_EINVAL (or MA_EIO) and a message containing every expected fragment. */
static void expect_error(const char *const *argv_tail, const char *const *env, int rc_want, const char *const *frags)
{
    cfg_config c;
    char err[512];
    int rc = load(&c, argv_tail, env, err, sizeof err);
    assert_int_equal(rc, rc_want);
    for (int i = 0; frags[i]; i++)
        if (!strstr(err, frags[i]))
            fail_msg("error \"%s\" lacks \"%s\"", err, frags[i]);
}

static void test_refusals(void **state)
{
    (void)state;
    expect_error((const char *[]){ "--threads", "0", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--threads", "\"0\"", "1..1024", NULL });
    expect_error((const char *[]){ "--threads", "4x", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--threads", "not an integer", NULL });
    expect_error((const char *[]){ "--max-body", "-1", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--max-body", "size in bytes", NULL });
    expect_error((const char *[]){ "--max-body", "99999999999999999999999", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--max-body", NULL });
    expect_error((const char *[]){ "--header-timeout", "5 days", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--header-timeout", "duration", NULL });
    expect_error((const char *[]){ "--log-level", "loud", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--log-level", "error, warn, info or debug", NULL });
    expect_error((const char *[]){ "--store-check", "never", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--store-check", "\"never\"", "background or open", NULL });
    expect_error((const char *[]){ "--listen", "127.0.0.1", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--listen", "PORT 0..65535", NULL });
    expect_error((const char *[]){ "--listen", "example.com:80", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--listen", "IPv4", NULL });
    expect_error((const char *[]){ "--listen", "1.2.3.4:65536", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--listen", NULL });
    expect_error((const char *[]){ "--token", "a b", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--token", "visible ASCII", NULL });
    expect_error((const char *[]){ "--node-id", "a b", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--node-id", "[A-Za-z0-9._:-]", NULL });
    expect_error((const char *[]){ "--node-id", "n\"1", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--node-id", NULL });
    expect_error((const char *[]){ "--node-id", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", NULL }, NULL,
                 MA_EINVAL, (const char *[]){ "--node-id", "at most 64", NULL });
    expect_error((const char *[]){ "--nope", "1", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--nope", "unknown option", NULL });
    expect_error((const char *[]){ "--max_body", "1", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--max_body", "unknown option", NULL });
    expect_error((const char *[]){ "--threads", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "--threads", "missing value", NULL });
    expect_error((const char *[]){ "stray", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ "stray", "unexpected argument", NULL });
    expect_error(NULL, (const char *[]){ "MEMATTN_THREADS=many", NULL }, MA_EINVAL,
                 (const char *[]){ "MEMATTN_THREADS", "threads", "\"many\"", NULL });
    expect_error((const char *[]){ "--config", "/nonexistent/memattn.conf", NULL }, NULL, MA_EIO,
                 (const char *[]){ "/nonexistent/memattn.conf", "No such file", NULL });
}

static void test_file_refusals(void **state)
{
    (void)state;
    const char *f = write_conf("threads = 2\n\nbogus_key = 1\n");
    char line3[96];
    snprintf(line3, sizeof line3, "%s:3", f);
    expect_error((const char *[]){ "--config", f, NULL }, NULL, MA_EINVAL,
                 (const char *[]){ line3, "unknown key \"bogus_key\"", NULL });
    unlink(f);
    f = write_conf("# ok\nmax_connections = 0\n");
    char line2[96];
    snprintf(line2, sizeof line2, "%s:2", f);
    expect_error((const char *[]){ "--config", f, NULL }, NULL, MA_EINVAL,
                 (const char *[]){ line2, "max-connections", "1..1000000", NULL });
    unlink(f);
    f = write_conf("threads 4\n");
    expect_error((const char *[]){ "--config", f, NULL }, NULL, MA_EINVAL,
                 (const char *[]){ ":1", "key = value", NULL });
    unlink(f);
    f = write_conf("token = \"abc\n");
    expect_error((const char *[]){ "--config", f, NULL }, NULL, MA_EINVAL,
                 (const char *[]){ ":1", "unterminated", NULL });
    unlink(f);
    f = write_conf("config = other.conf\n");
    expect_error((const char *[]){ "--config", f, NULL }, NULL, MA_EINVAL, (const char *[]){ ":1", "config", NULL });
    /* A flag fixes nothing when the file below it is bad: the file is still refused. */
    expect_error((const char *[]){ "--config", f, "--threads", "2", NULL }, NULL, MA_EINVAL,
                 (const char *[]){ ":1", NULL });
}

static void test_usage_lists_everything(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cfg_usage(f);
    fclose(f);
    const char *names[] = { "--listen", "MEMATTN_LISTEN", "--data", "MEMATTN_DATA", "--config", "--token",
                            "--threads", "--max-body", "MEMATTN_MAX_BODY", "--memory", "--log-level", "--log-format",
                            "--max-header-bytes", "--max-uri", "--header-timeout", "--body-timeout",
                            "--idle-timeout", "--max-connections", "--drain-timeout", "--queue", "--cors-origin",
                            "MEMATTN_CORS_ORIGIN", "--store-check", "MEMATTN_STORE_CHECK", "--version",
                            "--help", NULL };
    for (int i = 0; names[i]; i++)
        if (!strstr(buf, names[i]))
            fail_msg("--help lacks %s", names[i]);
    free(buf);
}

/* --cors-origin: a comma list, repeatable within one source (appends), replaced by a higher source;
 * each origin checked; cfg_cors_allows compares whole origins. */
static void test_cors_origin(void **state)
{
    (void)state;
    cfg_config c;
    char err[256];
    assert_int_equal(load(&c, NULL, NULL, err, sizeof err), 0);
    assert_string_equal(c.cors_origin, "");
    assert_false(cfg_cors_allows(&c, "https://a.example"));

    const char *file = write_conf("cors_origin = https://f1.example\ncors-origin = \"http://f2.example:8000\"\n");
    const char *a1[] = { "--config", file, NULL };
    assert_int_equal(load(&c, a1, NULL, err, sizeof err), 0);
    assert_string_equal(c.cors_origin, "https://f1.example,http://f2.example:8000");

    const char *env[] = { "MEMATTN_CORS_ORIGIN= https://e.example , http://localhost:3000", NULL };
    assert_int_equal(load(&c, a1, env, err, sizeof err), 0);
    assert_string_equal(c.cors_origin, "https://e.example,http://localhost:3000");

    const char *a2[] = { "--config", file, "--cors-origin", "https://a.example", "--cors-origin=https://b.example,http://[::1]:8080",
                         NULL };
    assert_int_equal(load(&c, a2, env, err, sizeof err), 0);
    assert_string_equal(c.cors_origin, "https://a.example,https://b.example,http://[::1]:8080");
    assert_true(cfg_cors_allows(&c, "https://a.example"));
    assert_true(cfg_cors_allows(&c, "HTTPS://B.example"));
    assert_true(cfg_cors_allows(&c, "http://[::1]:8080"));
    assert_false(cfg_cors_allows(&c, "https://a.example.evil"));
    assert_false(cfg_cors_allows(&c, "https://a.exampl"));
    assert_false(cfg_cors_allows(&c, "null"));
    assert_false(cfg_cors_allows(&c, NULL));

    const char *star[] = { "--cors-origin", "*", NULL };
    assert_int_equal(load(&c, star, NULL, err, sizeof err), 0);
    assert_true(cfg_cors_allows(&c, "https://anything.example"));

    const char *bad[][3] = { { "--cors-origin", "https://a.example/", NULL }, { "--cors-origin", "a.example", NULL },
                             { "--cors-origin", "ftp://a.example", NULL }, { "--cors-origin", "https://a.example/x", NULL } };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(load(&c, bad[i], NULL, err, sizeof err), MA_EINVAL);
        assert_non_null(strstr(err, "--cors-origin"));
        assert_non_null(strstr(err, "is not an origin"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test_teardown(test_precedence, teardown_file),
        cmocka_unit_test(test_value_syntax),
        cmocka_unit_test(test_help_version),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test_teardown(test_file_refusals, teardown_file),
        cmocka_unit_test(test_usage_lists_everything),
        cmocka_unit_test_teardown(test_cors_origin, teardown_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
