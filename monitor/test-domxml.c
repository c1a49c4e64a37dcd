/* Unit tests of the domain XML reader (domxml.c): what the libvirt modules
 * take from a live domain XML, in the forms libvirtd writes. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "domxml.h"
#include "error.h"

static const char chain_xml[] =
    "<domain type='qemu' id='3'><name>vm1</name><devices>"
    "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
    "<disk type='block' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source dev='/dev/vg0/leaf' index='4'/>"
    "<backingStore type='block' index='3'><format type='qcow2'/><source dev='/dev/vg0/mid'/>"
    "<backingStore/></backingStore>"
    "<mirror type='block' job='copy' ready='yes'><format type='qcow2'/>"
    "<source dev='/dev/vg1/leaf' index='5'/></mirror>"
    "<target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>"
    "<disk type='file' device='disk'><source file='/srv/vdb.raw' index='1'/><backingStore/>"
    "<target dev='vdb' bus='virtio'/></disk>"
    "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
    "<disk type='file' device='disk'><source file='/no/target'/></disk>"
    "<interface type='network'><target dev='vnet0'/></interface>"
    "</devices></domain>";

static void test_chain_and_mirror(void **state)
{
    (void)state;
    struct lsm_domxml_disk *d;
    unsigned n;
    assert_int_equal(lsm_domxml_disks(chain_xml, strlen(chain_xml), "vm1", &d, &n), 0);
    /* the disk without a target and the interface are not disks here */
    assert_int_equal(n, 3);
    const struct lsm_domxml_disk *a = lsm_domxml_find(d, n, "vda");
    assert_ptr_equal(a, &d[0]);
    assert_string_equal(a->type, "block");
    assert_string_equal(a->device, "disk");
    assert_string_equal(a->alias, "virtio-disk0");
    assert_string_equal(a->src.path, "/dev/vg0/leaf");
    assert_int_equal(a->src.index, 4);
    assert_true(a->has_backing);
    assert_true(a->has_mirror);
    assert_string_equal(a->mirror_ready, "yes");
    assert_string_equal(a->mirror.path, "/dev/vg1/leaf");
    assert_int_equal(a->mirror.index, 5);
    assert_string_equal(a->src.format, "qcow2");      /* <driver type=> */
    assert_string_equal(a->mirror.format, "qcow2");   /* <mirror><format type=> */

    const struct lsm_domxml_disk *b = lsm_domxml_find(d, n, "vdb");
    assert_non_null(b);
    assert_string_equal(b->src.path, "/srv/vdb.raw");
    assert_int_equal(b->src.index, 1);
    assert_false(b->has_backing);      /* an empty <backingStore/> */
    assert_false(b->has_mirror);
    assert_null(b->mirror.path);
    assert_int_equal(b->mirror.index, -1);
    assert_null(b->alias);
    assert_null(b->src.format);        /* no <driver> */
    assert_null(b->mirror.format);

    const struct lsm_domxml_disk *c = lsm_domxml_find(d, n, "hdc");
    assert_string_equal(c->device, "cdrom");
    assert_null(c->src.path);
    assert_int_equal(c->src.index, -1);
    assert_null(lsm_domxml_find(d, n, "vdz"));
    lsm_domxml_free(d, n);
}

static void test_old_mirror_and_odd_indexes(void **state)
{
    (void)state;
    static const char xml[] =
        "<domain><devices><disk type='file'><source file='/a.qcow2' index='x9'/>"
        "<mirror file='/b.qcow2' format='qcow2' job='copy' ready='pivot'/>"
        "<target dev='sda'/></disk>"
        "<disk type='block'><driver name='qemu' type='raw' cache='none'/>"
        "<source dev='/dev/c' index='2147483648'/>"
        "<mirror ready='abort'><source file='/d' index='-3'/></mirror>"
        "<target dev='sdb'/></disk></devices></domain>";
    struct lsm_domxml_disk *d;
    unsigned n;
    assert_int_equal(lsm_domxml_disks(xml, strlen(xml), "vm1", &d, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(d[0].src.index, -1);
    assert_string_equal(d[0].mirror.path, "/b.qcow2");   /* <mirror file=...> */
    assert_string_equal(d[0].mirror.format, "qcow2");    /* <mirror format=...> */
    assert_string_equal(d[1].src.format, "raw");
    assert_string_equal(d[0].mirror_ready, "pivot");
    assert_int_equal(d[0].mirror.index, -1);
    assert_int_equal(d[1].src.index, -1);                /* over INT_MAX */
    assert_string_equal(d[1].mirror.path, "/d");
    assert_int_equal(d[1].mirror.index, -1);             /* negative */
    lsm_domxml_free(d, n);
}

static void test_refusals(void **state)
{
    (void)state;
    struct lsm_domxml_disk *d = (void *)1;
    unsigned n = 7;
    static const char bad[] = "<domain><devices><disk><target dev='vda'/></devices>";
    lsm_error_clear();
    assert_int_equal(lsm_domxml_disks(bad, strlen(bad), "vm1", &d, &n), -EBADMSG);
    assert_null(d);
    assert_int_equal(n, 0);
    assert_string_equal(lsm_last_error(), "the XML of domain 'vm1' is not well-formed");
    assert_int_equal(lsm_domxml_disks("", 0, "vm1", &d, &n), -EBADMSG);
    /* not a domain: nothing, without an error */
    static const char other[] = "<network><devices><disk><target dev='vda'/></disk></devices></network>";
    assert_int_equal(lsm_domxml_disks(other, strlen(other), "vm1", &d, &n), 0);
    assert_int_equal(n, 0);
    lsm_domxml_free(d, n);
    /* the length is what counts, not a NUL */
    static const char cut[] = "<domain><devices><disk><target dev='vda'/></disk></devices></domain>junk";
    assert_int_equal(lsm_domxml_disks(cut, strlen(cut) - 4, "vm1", &d, &n), 0);
    assert_int_equal(n, 1);
    lsm_domxml_free(d, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_and_mirror),
        cmocka_unit_test(test_old_mirror_and_odd_indexes),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
