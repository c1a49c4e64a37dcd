/* Small libxml2 helpers for the libvirt modules (mirror-libvirt.c,
 * extender-libvirt.c, vm-snapshot-libvirt.c), which read domain XML.  Each
 * module is its own shared object, so these are inline rather than a
 * source file of the monitor library. */
#ifndef LSM_LIBVIRT_XML_H
#define LSM_LIBVIRT_XML_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/tree.h>

static inline bool lsm_xml_is_elem(xmlNodePtr n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

/* The first child element of n (may be NULL) called name, or NULL. */
static inline xmlNodePtr lsm_xml_child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (lsm_xml_is_elem(c, name))
            return c;
    return NULL;
}

/* Attribute name of n (may be NULL) as a malloc'ed string, or NULL. */
static inline char *lsm_xml_attr(xmlNodePtr n, const char *name)
{
    xmlChar *v = n ? xmlGetProp(n, (const xmlChar *)name) : NULL;
    if (!v)
        return NULL;
    char *s = strdup((const char *)v);
    xmlFree(v);
    return s;
}

#endif
