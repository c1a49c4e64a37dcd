/* The disks of a libvirt domain XML (domxml.h). */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "cleanup.h"
#include "domxml.h"
#include "error.h"

LSM_DEFINE_CLEANUP(xmlDocPtr, xmlFreeDoc)

static bool is_elem(xmlNodePtr n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

/* The first child element of n (may be NULL) called name, or NULL. */
static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (is_elem(c, name))
            return c;
    return NULL;
}

/* Attribute name of n (may be NULL) as a malloc'ed string, or NULL. */
static char *attr(xmlNodePtr n, const char *name)
{
    xmlChar *v = n ? xmlGetProp(n, (const xmlChar *)name) : NULL;
    if (!v)
        return NULL;
    char *s = strdup((const char *)v);
    xmlFree(v);
    return s;
}

/* libvirt's index= is a small positive number; anything else is unknown. */
static int parse_index(const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v > INT_MAX)
        return -1;
    return (int)v;
}

/* The path and index of a <source> element (may be NULL). */
static void source_of(xmlNodePtr src, struct lsm_domxml_source *s)
{
    s->index = -1;
    if (!src)
        return;
    s->path = attr(src, "dev");
    if (!s->path)
        s->path = attr(src, "file");
    _cleanup_free_ char *idx = attr(src, "index");
    s->index = parse_index(idx);
}

static void disk_free(struct lsm_domxml_disk *d)
{
    free(d->target);
    free(d->device);
    free(d->type);
    free(d->alias);
    free(d->src.path);
    free(d->src.format);
    free(d->mirror_ready);
    free(d->mirror.path);
    free(d->mirror.format);
    memset(d, 0, sizeof *d);
}

static void parse_disk(xmlNodePtr n, struct lsm_domxml_disk *d)
{
    d->device = attr(n, "device");
    d->type = attr(n, "type");
    d->alias = attr(child(n, "alias"), "name");
    source_of(child(n, "source"), &d->src);
    d->src.format = attr(child(n, "driver"), "type");
    xmlNodePtr bs = child(n, "backingStore");
    d->has_backing = bs && child(bs, "source");
    d->mirror.index = -1;
    xmlNodePtr m = child(n, "mirror");
    if (m) {
        d->has_mirror = true;
        d->mirror_ready = attr(m, "ready");
        source_of(child(m, "source"), &d->mirror);
        if (!d->mirror.path)            /* the old form: <mirror file='...'> */
            d->mirror.path = attr(m, "file");
        d->mirror.format = attr(child(m, "format"), "type");
        if (!d->mirror.format)          /* the old form: format= */
            d->mirror.format = attr(m, "format");
    }
}

int lsm_domxml_disks(const char *xml, size_t len, const char *name,
                     struct lsm_domxml_disk **disks, unsigned *n)
{
    *disks = NULL;
    *n = 0;
    if (len > INT_MAX)
        return lsm_error(-EBADMSG, "the XML of domain '%s' is too large (%zu bytes)", name, len);
    _cleanup_(xmlFreeDocp) xmlDocPtr doc =
        xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return lsm_error(-EBADMSG, "the XML of domain '%s' is not well-formed", name);
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || !is_elem(root, "domain"))
        return 0;
    xmlNodePtr devices = child(root, "devices");
    struct lsm_domxml_disk *v = NULL;
    unsigned count = 0, cap = 0;
    for (xmlNodePtr c = devices ? devices->children : NULL; c; c = c->next) {
        if (!is_elem(c, "disk"))
            continue;
        char *target = attr(child(c, "target"), "dev");
        if (!target)
            continue;
        if (count == cap) {
            unsigned ncap = cap ? cap * 2 : 8;
            struct lsm_domxml_disk *nv = ncap < cap ? NULL : realloc(v, ncap * sizeof *v);
            if (!nv) {
                free(target);
                lsm_domxml_free(v, count);
                return lsm_error(-ENOMEM, "out of memory");
            }
            v = nv;
            cap = ncap;
        }
        struct lsm_domxml_disk *d = &v[count++];
        memset(d, 0, sizeof *d);
        d->target = target;
        parse_disk(c, d);
    }
    *disks = v;
    *n = count;
    return 0;
}

const struct lsm_domxml_disk *lsm_domxml_find(const struct lsm_domxml_disk *disks, unsigned n,
                                              const char *target)
{
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(disks[i].target, target))
            return &disks[i];
    return NULL;
}

void lsm_domxml_free(struct lsm_domxml_disk *disks, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        disk_free(&disks[i]);
    free(disks);
}
