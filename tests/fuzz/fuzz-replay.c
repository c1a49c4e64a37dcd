/* Replay driver: feed each file named on the command line (or each regular
 * file in a directory named there) to LLVMFuzzerTestOneInput, so fuzz
 * corpora run as ordinary tests in every build, fuzzing or not.
 * Exit 0 when every input ran, 1 on an I/O error or when there was no input.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz-replay: %s: cannot open: %m\n", path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *data = malloc(cap);
    size_t n;
    while (data && (n = fread(data + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *bigger = realloc(data, cap * 2);
            if (!bigger) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
            cap *= 2;
        }
    }
    int err = ferror(f) || !data;
    fclose(f);
    if (err) {
        fprintf(stderr, "fuzz-replay: %s: cannot read\n", path);
        free(data);
        return -1;
    }
    printf("%s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run every regular file of a directory, in name order; returns the count or -1. */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "fuzz-replay: %s: cannot open: %m\n", dir);
        return -1;
    }
    char **names = NULL;
    size_t count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char **more = realloc(names, (count + 1) * sizeof(*names));
        if (!more)
            break;
        names = more;
        if (!(names[count] = malloc(strlen(dir) + strlen(de->d_name) + 2)))
            break;
        sprintf(names[count++], "%s/%s", dir, de->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof(*names), cmp_names);
    int ran = 0, rc = 0;
    for (size_t i = 0; i < count; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(names[i]) < 0)
                rc = -1;
            else
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return rc < 0 ? -1 : ran;
}

int main(int argc, char **argv)
{
    int ran = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            int n = run_dir(argv[i]);
            if (n < 0)
                failed = 1;
            else
                ran += n;
        } else if (run_file(argv[i]) < 0) {
            failed = 1;
        } else {
            ran++;
        }
    }
    if (ran == 0) {
        fprintf(stderr, "fuzz-replay: no input\n");
        return 1;
    }
    printf("fuzz-replay: %d inputs\n", ran);
    return failed;
}
