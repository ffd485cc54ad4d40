/*
 * repspec C99 example port: answers the conformance vectors (docs/vectors.md) of
 *
 *   §2.fusion             fuse_repvgg_block         K = t3·K3 + t1·pad(K1) + t̃0·I, b = Σ (β − μ·t)
 *   §3.grad-mult          grad_mult_mask            M = α3^e + [centre]·α1^e + [centre, o = i, trainable]
 *   §3.repopt-sgd-step    repopt_sgd_step           d = M⊙g + λW; buf; nesterov; W − lr·d
 *   §5.uniform-weight     fake_quantize_weight      s = max|w|/(2^(b−1)−1), ŵ = clamp(rint(w/s))·s
 *   §5.uniform-activation fake_quantize_activation  s = (hi'−lo')/(2^b−1), zp = rint(−lo'/s), x̂
 *
 * in float64, from docs/SPEC.md alone (no repspec code).  Usage:
 *
 *   repspec_port VECTORS_DIR RESULTS_DIR
 *
 * reads VECTORS_DIR/manifest.json and the clause files, writes RESULTS_DIR/manifest.json and
 * one safetensors file per answered clause (RESULTS_DIR is created if missing).  Standard C99
 * plus POSIX mkdir; libc and libm only: the JSON and safetensors readers/writers are below.
 *
 * Compile-time broken variants (each must fail its clause in `repspec vectors check`):
 *   -DREPSPEC_BROKEN=1   weight decay added before the Grad Mult mask is applied (§3.repopt-sgd-step)
 *   -DREPSPEC_BROKEN=2   weights rounded half away from zero, round() instead of nearbyint() (§5.uniform-weight)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifndef REPSPEC_BROKEN
#define REPSPEC_BROKEN 0
#endif

#define MAX_NDIM 8
/* SPEC §5.zero-range / §5.scale-underflow: a scale below float32's smallest normal is a zero range */
#define MIN_SCALE 1.1754943508222875e-38 /* 2^-126 */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("repspec_port: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    if (!f) die("%s: cannot open (%s)", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) die("%s: cannot read", path);
    buf = xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) die("%s: short read", path);
    buf[n] = '\0';
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* ------------------------------------------------------------------------------ JSON (a DOM) */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct json {
    jtype t;
    int b;
    double num;
    char *str;          /* J_STR */
    size_t n;           /* J_ARR / J_OBJ: number of items */
    struct json *items; /* J_ARR / J_OBJ */
    char **keys;        /* J_OBJ */
} json;

typedef struct {
    const char *start, *s, *end, *what;
} jparser;

static void jfail(jparser *p, const char *msg)
{
    die("%s: not valid JSON (%s at byte %ld)", p->what, msg, (long)(p->s - p->start));
}

static void jws(jparser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\n' || *p->s == '\r' || *p->s == '\t')) p->s++;
}

static void put_utf8(char **out, size_t *len, size_t *cap, unsigned long cp)
{
    unsigned char b[4];
    int k = 0, i;
    if (cp < 0x80) b[k++] = (unsigned char)cp;
    else if (cp < 0x800) { b[k++] = (unsigned char)(0xC0 | (cp >> 6)); b[k++] = (unsigned char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        b[k++] = (unsigned char)(0xE0 | (cp >> 12)); b[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[k++] = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        b[k++] = (unsigned char)(0xF0 | (cp >> 18)); b[k++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); b[k++] = (unsigned char)(0x80 | (cp & 0x3F));
    }
    for (i = 0; i < k; i++) {
        if (*len + 1 >= *cap) { *cap = *cap * 2 + 16; *out = xrealloc(*out, *cap); }
        (*out)[(*len)++] = (char)b[i];
    }
}

static char *jstring(jparser *p)
{
    size_t len = 0, cap = 32;
    char *out = xmalloc(cap);
    if (*p->s != '"') jfail(p, "expected a string");
    p->s++;
    while (p->s < p->end && *p->s != '"') {
        unsigned long cp = (unsigned char)*p->s++;
        if (cp == '\\') {
            char e = *p->s++;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                char hex[5] = {0};
                if (p->end - p->s < 4) jfail(p, "short \\u escape");
                memcpy(hex, p->s, 4);
                p->s += 4;
                cp = strtoul(hex, NULL, 16);
                if (cp >= 0xD800 && cp < 0xDC00 && p->s[0] == '\\' && p->s[1] == 'u') { /* surrogate pair */
                    unsigned long lo;
                    memcpy(hex, p->s + 2, 4);
                    lo = strtoul(hex, NULL, 16);
                    p->s += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                break;
            }
            default: jfail(p, "bad escape");
            }
            put_utf8(&out, &len, &cap, cp);
        } else {
            if (len + 1 >= cap) { cap *= 2; out = xrealloc(out, cap); }
            out[len++] = (char)cp;
        }
    }
    if (p->s >= p->end) jfail(p, "unterminated string");
    p->s++;
    out[len] = '\0';
    return out;
}

static void jvalue(jparser *p, json *v);

static void jcontainer(jparser *p, json *v, int object)
{
    size_t cap = 0;
    char close = object ? '}' : ']';
    v->t = object ? J_OBJ : J_ARR;
    v->n = 0;
    v->items = NULL;
    v->keys = NULL;
    p->s++;
    jws(p);
    if (*p->s == close) { p->s++; return; }
    for (;;) {
        if (v->n == cap) {
            cap = cap * 2 + 4;
            v->items = xrealloc(v->items, cap * sizeof *v->items);
            if (object) v->keys = xrealloc(v->keys, cap * sizeof *v->keys);
        }
        jws(p);
        if (object) {
            v->keys[v->n] = jstring(p);
            jws(p);
            if (*p->s++ != ':') jfail(p, "expected ':'");
        }
        jvalue(p, &v->items[v->n++]);
        jws(p);
        if (*p->s == ',') { p->s++; continue; }
        if (*p->s == close) { p->s++; return; }
        jfail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static void jvalue(jparser *p, json *v)
{
    memset(v, 0, sizeof *v);
    jws(p);
    if (p->s >= p->end) jfail(p, "unexpected end");
    if (*p->s == '{') jcontainer(p, v, 1);
    else if (*p->s == '[') jcontainer(p, v, 0);
    else if (*p->s == '"') { v->t = J_STR; v->str = jstring(p); }
    else if (!strncmp(p->s, "true", 4)) { v->t = J_BOOL; v->b = 1; p->s += 4; }
    else if (!strncmp(p->s, "false", 5)) { v->t = J_BOOL; v->b = 0; p->s += 5; }
    else if (!strncmp(p->s, "null", 4)) { v->t = J_NULL; p->s += 4; }
    else {
        char *stop;
        v->t = J_NUM;
        v->num = strtod(p->s, &stop); /* correctly rounded: Python writes the shortest round-trip text */
        if (stop == p->s) jfail(p, "unexpected character");
        p->s = stop;
    }
}

static json json_parse(const char *text, size_t size, const char *what)
{
    jparser p;
    json v;
    p.start = p.s = text;
    p.end = text + size;
    p.what = what;
    jvalue(&p, &v);
    jws(&p);
    if (p.s != p.end) jfail(&p, "trailing data");
    return v;
}

static const json *jget(const json *obj, const char *key)
{
    size_t i;
    if (!obj || obj->t != J_OBJ) return NULL;
    for (i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

static const char *jstr(const json *v) { return v && v->t == J_STR ? v->str : NULL; }

/* ------------------------------------------------------------------------------ safetensors */

typedef struct {
    int ndim;
    long shape[MAX_NDIM];
    size_t n;
    double *v;
} tensor;

typedef struct {
    char *path, *buf;
    size_t size;
    json header;
    const unsigned char *data;
    size_t data_size;
} st_file;

static uint64_t le64(const unsigned char *b)
{
    uint64_t x = 0;
    int i;
    for (i = 7; i >= 0; i--) x = (x << 8) | b[i];
    return x;
}

static void st_open(st_file *f, const char *path)
{
    uint64_t hlen;
    f->path = (char *)path;
    f->buf = read_file(path, &f->size);
    if (f->size < 8) die("%s: not a safetensors file (too short)", path);
    hlen = le64((const unsigned char *)f->buf);
    if (hlen > f->size - 8) die("%s: not a safetensors file (header length)", path);
    f->header = json_parse(f->buf + 8, (size_t)hlen, path);
    f->data = (const unsigned char *)f->buf + 8 + hlen;
    f->data_size = f->size - 8 - (size_t)hlen;
}

/* The float64 tensor stored under `key` (F64 read bytewise: little-endian on any host). */
static tensor st_tensor(const st_file *f, const char *key)
{
    const json *e = jget(&f->header, key), *shape, *off;
    tensor t;
    size_t i, begin, end;
    if (!e) die("%s: no tensor %s", f->path, key);
    if (!jstr(jget(e, "dtype")) || strcmp(jstr(jget(e, "dtype")), "F64")) die("%s: %s is not F64", f->path, key);
    shape = jget(e, "shape");
    off = jget(e, "data_offsets");
    if (!shape || shape->t != J_ARR || shape->n > MAX_NDIM || !off || off->t != J_ARR || off->n != 2)
        die("%s: bad header entry %s", f->path, key);
    t.ndim = (int)shape->n;
    t.n = 1;
    for (i = 0; i < shape->n; i++) {
        t.shape[i] = (long)shape->items[i].num;
        t.n *= (size_t)t.shape[i];
    }
    begin = (size_t)off->items[0].num;
    end = (size_t)off->items[1].num;
    if (end < begin || end > f->data_size || end - begin != 8 * t.n) die("%s: bad data offsets of %s", f->path, key);
    t.v = xmalloc(t.n * sizeof(double));
    for (i = 0; i < t.n; i++) {
        uint64_t bits = le64(f->data + begin + 8 * i);
        memcpy(&t.v[i], &bits, sizeof bits);
    }
    return t;
}

/* The outputs of one clause, written as one safetensors file. */
typedef struct {
    size_t n, cap;
    char **keys;
    tensor *tensors;
} st_out;

static void out_add(st_out *o, const char *key, tensor t)
{
    if (o->n == o->cap) {
        o->cap = o->cap * 2 + 16;
        o->keys = xrealloc(o->keys, o->cap * sizeof *o->keys);
        o->tensors = xrealloc(o->tensors, o->cap * sizeof *o->tensors);
    }
    o->keys[o->n] = xmalloc(strlen(key) + 1);
    strcpy(o->keys[o->n], key);
    o->tensors[o->n++] = t;
}

static void fput_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void st_write(const st_out *o, const char *path)
{
    /* the header is built in a temporary file first: its length goes in front of it */
    FILE *h = tmpfile(), *f;
    long hlen, pad;
    size_t i, j, offset = 0;
    char *header;
    if (!h) die("cannot create a temporary file");
    fputs("{\"__metadata__\":{\"format\":\"repspec-vectors-results\"}", h);
    for (i = 0; i < o->n; i++) {
        const tensor *t = &o->tensors[i];
        fputc(',', h);
        fput_json_string(h, o->keys[i]);
        fputs(":{\"dtype\":\"F64\",\"shape\":[", h);
        for (j = 0; j < (size_t)t->ndim; j++) fprintf(h, "%s%ld", j ? "," : "", t->shape[j]);
        fprintf(h, "],\"data_offsets\":[%lu,%lu]}", (unsigned long)offset, (unsigned long)(offset + 8 * t->n));
        offset += 8 * t->n;
    }
    fputc('}', h);
    hlen = ftell(h);
    pad = (8 - hlen % 8) % 8; /* the data starts 8-byte aligned (spaces are valid JSON padding) */
    header = xmalloc((size_t)hlen);
    rewind(h);
    if (fread(header, 1, (size_t)hlen, h) != (size_t)hlen) die("temporary file: short read");
    fclose(h);
    f = fopen(path, "wb");
    if (!f) die("%s: cannot write (%s)", path, strerror(errno));
    for (i = 0; i < 8; i++) fputc((int)(((uint64_t)(hlen + pad) >> (8 * i)) & 0xFF), f);
    fwrite(header, 1, (size_t)hlen, f);
    for (i = 0; i < (size_t)pad; i++) fputc(' ', f);
    for (i = 0; i < o->n; i++)
        for (j = 0; j < o->tensors[i].n; j++) {
            uint64_t bits;
            int k;
            memcpy(&bits, &o->tensors[i].v[j], sizeof bits);
            for (k = 0; k < 8; k++) fputc((int)((bits >> (8 * k)) & 0xFF), f);
        }
    if (fclose(f) != 0) die("%s: write failed", path);
    free(header);
}

/* ---------------------------------------------------------------- reading a call's inputs */

typedef struct {
    const json *inputs;
    const st_file *arrays;
    const char *where;
} call_in;

static double in_number(const call_in *c, const char *name)
{
    const json *v = jget(c->inputs, name), *tag;
    if (v && v->t == J_NUM) return v->num;
    if (v && v->t == J_BOOL) return v->b;
    if ((tag = jget(v, "float")) && jstr(tag)) { /* JSON has no inf/nan: the vectors tag them */
        if (!strcmp(tag->str, "inf")) return HUGE_VAL;
        if (!strcmp(tag->str, "-inf")) return -HUGE_VAL;
        return NAN;
    }
    die("%s: input %s is not a number", c->where, name);
    return 0;
}

static int in_present(const json *spec) { return spec && spec->t != J_NULL; }

static tensor array_of(const call_in *c, const json *spec, const char *name)
{
    const char *key = jstr(jget(spec, "array"));
    if (!key) die("%s: input %s is not an array", c->where, name);
    return st_tensor(c->arrays, key);
}

static tensor in_array(const call_in *c, const char *name)
{
    return array_of(c, jget(c->inputs, name), name);
}

/* params/buffers are {"dict": {local name: array}} */
static const json *in_dict_entry(const call_in *c, const char *dict, const char *key)
{
    return jget(jget(jget(c->inputs, dict), "dict"), key);
}

static tensor in_dict_array(const call_in *c, const char *dict, const char *key)
{
    const json *spec = in_dict_entry(c, dict, key);
    if (!spec) die("%s: %s has no %s", c->where, dict, key);
    return array_of(c, spec, key);
}

static tensor new_tensor(const json *spec)
{
    const json *shape = jget(spec, "shape");
    tensor t;
    size_t i;
    if (!shape || shape->t != J_ARR || shape->n > MAX_NDIM) die("an output spec without a shape");
    t.ndim = (int)shape->n;
    t.n = 1;
    for (i = 0; i < shape->n; i++) {
        t.shape[i] = (long)shape->items[i].num;
        t.n *= (size_t)t.shape[i];
    }
    t.v = xmalloc(t.n * sizeof(double));
    return t;
}

static const char *out_key(const json *spec) { return jstr(jget(spec, "array")); }

/* ------------------------------------------------------------------------ the five operations */

/* SPEC §0.batch-norm: t = γ / sqrt(σ² + eps), per output channel */
static double bn_factor(double gamma, double var, double eps) { return gamma / sqrt(var + eps); }

/* SPEC §2.fusion (with §4.oabn-eval's clipped identity factor) */
static void fuse_repvgg_block(const call_in *c, const json *outputs, st_out *out)
{
    const long O = (long)in_number(c, "out_channels"), I = (long)in_number(c, "in_channels");
    const long G = (long)in_number(c, "groups");
    const double eps = in_number(c, "eps"), s = in_number(c, "oabn_threshold");
    const long ipg = I / G; /* input channels per group: the kernel is (O, I/g, 3, 3) */
    const int identity = in_present(in_dict_entry(c, "params", "rbr_identity.weight"));
    const json *parts = jget(outputs, "tuple");
    tensor K3 = in_dict_array(c, "params", "rbr_dense.conv.weight"), K1 = in_dict_array(c, "params", "rbr_1x1.conv.weight");
    tensor g3 = in_dict_array(c, "params", "rbr_dense.bn.weight"), b3 = in_dict_array(c, "params", "rbr_dense.bn.bias");
    tensor g1 = in_dict_array(c, "params", "rbr_1x1.bn.weight"), b1 = in_dict_array(c, "params", "rbr_1x1.bn.bias");
    tensor m3 = in_dict_array(c, "buffers", "rbr_dense.bn.running_mean");
    tensor v3 = in_dict_array(c, "buffers", "rbr_dense.bn.running_var");
    tensor m1 = in_dict_array(c, "buffers", "rbr_1x1.bn.running_mean");
    tensor v1 = in_dict_array(c, "buffers", "rbr_1x1.bn.running_var");
    tensor K, b;
    long o, i, p;
    if (!parts || parts->n != 2) die("%s: fuse_repvgg_block outputs a (K, b) tuple", c->where);
    K = new_tensor(&parts->items[0]);
    b = new_tensor(&parts->items[1]);
    if (K.n != (size_t)(O * ipg * 9) || b.n != (size_t)O) die("%s: output shapes", c->where);
    for (o = 0; o < O; o++) {
        const double t3 = bn_factor(g3.v[o], v3.v[o], eps), t1 = bn_factor(g1.v[o], v1.v[o], eps);
        for (i = 0; i < ipg; i++)
            for (p = 0; p < 9; p++) {
                const size_t at = ((size_t)o * ipg + i) * 9 + p;
                K.v[at] = t3 * K3.v[at] + (p == 4 ? t1 * K1.v[(size_t)o * ipg + i] : 0.0);
            }
        b.v[o] = (b3.v[o] - m3.v[o] * t3) + (b1.v[o] - m1.v[o] * t1);
    }
    if (identity) { /* I_c[o, o mod (I/g), 1, 1] = 1 (SPEC §0.kernels) */
        tensor g0 = in_dict_array(c, "params", "rbr_identity.weight"), b0 = in_dict_array(c, "params", "rbr_identity.bias");
        tensor m0 = in_dict_array(c, "buffers", "rbr_identity.running_mean");
        tensor v0 = in_dict_array(c, "buffers", "rbr_identity.running_var");
        for (o = 0; o < O; o++) {
            const double t0 = fmax(-s, fmin(s, bn_factor(g0.v[o], v0.v[o], eps))); /* OABN: clip(t0, −s, s) */
            K.v[((size_t)o * ipg + (size_t)(o % ipg)) * 9 + 4] += t0;
            b.v[o] += b0.v[o] - m0.v[o] * t0;
        }
    }
    out_add(out, out_key(&parts->items[0]), K);
    out_add(out, out_key(&parts->items[1]), b);
}

/* SPEC §3.grad-mult */
static void grad_mult_mask(const call_in *c, const json *outputs, st_out *out)
{
    tensor a3 = in_array(c, "scale_conv"), a1 = in_array(c, "scale_1x1");
    const long I = (long)in_number(c, "in_channels"), e = (long)in_number(c, "exponent");
    const char *identity = jstr(jget(c->inputs, "identity"));
    const long O = (long)a3.n;
    tensor M = new_tensor(outputs);
    long o, i, p;
    if (!identity || M.n != (size_t)(O * I * 9)) die("%s: grad_mult_mask inputs", c->where);
    for (o = 0; o < O; o++) {
        const double p3 = e == 2 ? a3.v[o] * a3.v[o] : a3.v[o], p1 = e == 2 ? a1.v[o] * a1.v[o] : a1.v[o];
        for (i = 0; i < I; i++)
            for (p = 0; p < 9; p++) {
                double m = p3;
                if (p == 4) m += p1;
                if (p == 4 && o == i && !strcmp(identity, "trainable")) m += 1.0;
                M.v[((size_t)o * I + i) * 9 + p] = m;
            }
    }
    out_add(out, out_key(outputs), M);
}

/* SPEC §3.repopt-sgd-step: torch.optim.SGD's order, the mask on the gradient only */
static void repopt_sgd_step(const call_in *c, const json *outputs, st_out *out)
{
    const double lr = in_number(c, "lr"), mu = in_number(c, "momentum"), tau = in_number(c, "dampening");
    const double wd = in_number(c, "weight_decay");
    const int nesterov = (int)in_number(c, "nesterov");
    const int masked = in_present(jget(c->inputs, "grad_mult_mask"));
    const int first = !in_present(jget(c->inputs, "momentum_buffer"));
    const json *parts = jget(outputs, "tuple");
    tensor W = in_array(c, "param"), g = in_array(c, "grad"), M, buf0, Wn, bufn;
    size_t k;
    if (!parts || parts->n != 2) die("%s: repopt_sgd_step outputs a (param, buffer) tuple", c->where);
    M = masked ? in_array(c, "grad_mult_mask") : W;
    buf0 = first ? W : in_array(c, "momentum_buffer");
    Wn = new_tensor(&parts->items[0]);
    bufn = mu != 0 ? new_tensor(&parts->items[1]) : Wn;
    if (Wn.n != W.n || g.n != W.n) die("%s: shapes", c->where);
    for (k = 0; k < W.n; k++) {
#if REPSPEC_BROKEN == 1
        double d = g.v[k] + (wd != 0 ? wd * W.v[k] : 0.0); /* broken: the decay goes through the mask */
        if (masked) d = M.v[k] * d;
#else
        double d = masked ? M.v[k] * g.v[k] : g.v[k];
        if (wd != 0) d = d + wd * W.v[k];
#endif
        if (mu != 0) {
            const double b = first ? d : mu * buf0.v[k] + (1.0 - tau) * d;
            bufn.v[k] = b;
            d = nesterov ? d + mu * b : b;
        }
        Wn.v[k] = W.v[k] - lr * d;
    }
    out_add(out, out_key(&parts->items[0]), Wn);
    if (mu != 0) out_add(out, out_key(&parts->items[1]), bufn); /* no buffer when momentum == 0 */
}

static double round_code(double r)
{
#if REPSPEC_BROKEN == 2
    return round(r); /* broken: half away from zero */
#else
    return nearbyint(r); /* half to even under the default rounding mode (SPEC §6.discrete) */
#endif
}

/* SPEC §5.uniform-weight: symmetric, narrow range, per layer or per output channel (axis 0) */
static void fake_quantize_weight(const call_in *c, const json *outputs, st_out *out)
{
    tensor w = in_array(c, "w"), y = new_tensor(outputs);
    const long bits = (long)in_number(c, "bits");
    const int per_channel = (int)in_number(c, "per_channel");
    const double qmax = ldexp(1.0, (int)bits - 1) - 1.0;
    const size_t rows = per_channel && w.ndim >= 1 ? (size_t)w.shape[0] : 1;
    const size_t per_row = rows ? w.n / rows : 0;
    size_t r, k;
    if (y.n != w.n) die("%s: shapes", c->where);
    for (r = 0; r < rows; r++) {
        double amax = 0.0, scale;
        for (k = 0; k < per_row; k++) amax = fmax(amax, fabs(w.v[r * per_row + k]));
        scale = amax / qmax;
        if (scale < MIN_SCALE) scale = 0.0; /* §5.zero-range: every code 0 */
        for (k = 0; k < per_row; k++) {
            const double q = scale > 0 ? fmax(-qmax, fmin(qmax, round_code(w.v[r * per_row + k] / scale))) : 0.0;
            y.v[r * per_row + k] = q * scale;
        }
    }
    out_add(out, out_key(outputs), y);
}

/* SPEC §5.uniform-activation: asymmetric, per layer, 0 always representable */
static void fake_quantize_activation(const call_in *c, const json *outputs, st_out *out)
{
    tensor x = in_array(c, "x"), y = new_tensor(outputs);
    const long bits = (long)in_number(c, "bits");
    const double lo = fmin(in_number(c, "lo"), 0.0), hi = fmax(in_number(c, "hi"), 0.0);
    const double qmax = ldexp(1.0, (int)bits) - 1.0;
    double scale = (hi - lo) / qmax, zp = 0.0;
    size_t k;
    if (y.n != x.n) die("%s: shapes", c->where);
    if (scale < MIN_SCALE) scale = 0.0; /* §5.zero-range: (0, 0), every input maps to 0 */
    else zp = fmax(0.0, fmin(qmax, nearbyint(-lo / scale)));
    for (k = 0; k < x.n; k++) {
        const double q = fmax(0.0, fmin(qmax, (scale > 0 ? nearbyint(x.v[k] / scale) : 0.0) + zp));
        y.v[k] = (q - zp) * scale;
    }
    out_add(out, out_key(outputs), y);
}

/* --------------------------------------------------------------------------------- the driver */

typedef void (*operation)(const call_in *, const json *, st_out *);

static const struct {
    const char *method;
    operation run;
} OPERATIONS[] = {
    {"fuse_repvgg_block", fuse_repvgg_block},
    {"grad_mult_mask", grad_mult_mask},
    {"repopt_sgd_step", repopt_sgd_step},
    {"fake_quantize_weight", fake_quantize_weight},
    {"fake_quantize_activation", fake_quantize_activation},
};

static operation find_operation(const char *method)
{
    size_t i;
    for (i = 0; method && i < sizeof OPERATIONS / sizeof OPERATIONS[0]; i++)
        if (!strcmp(OPERATIONS[i].method, method)) return OPERATIONS[i].run;
    return NULL;
}

static int answers_clause(const json *clause)
{
    const json *methods = jget(clause, "methods");
    size_t i;
    if (!methods || methods->t != J_ARR) return 0;
    for (i = 0; i < methods->n; i++)
        if (!find_operation(jstr(&methods->items[i]))) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *vectors_dir, *results_dir;
    char *manifest_path, *text, *out_path;
    size_t size, ci, answered = 0, calls = 0;
    json manifest;
    const json *clauses;
    FILE *m;

    if (argc != 3) {
        fprintf(stderr, "usage: %s VECTORS_DIR RESULTS_DIR\n", argv[0]);
        return 2;
    }
    vectors_dir = argv[1];
    results_dir = argv[2];
    manifest_path = join_path(vectors_dir, "manifest.json");
    text = read_file(manifest_path, &size);
    manifest = json_parse(text, size, manifest_path);
    if (!jstr(jget(&manifest, "format")) || strcmp(jget(&manifest, "format")->str, "repspec-vectors"))
        die("%s: not a repspec-vectors manifest", manifest_path);
    if (!jget(&manifest, "schema_version") || jget(&manifest, "schema_version")->num != 1)
        die("%s: schema version is not 1 (this port reads version 1)", manifest_path);
    clauses = jget(&manifest, "clauses");
    if (!clauses || clauses->t != J_ARR) die("%s: no clauses", manifest_path);
    if (mkdir(results_dir, 0777) != 0 && errno != EEXIST) die("%s: cannot create (%s)", results_dir, strerror(errno));

    out_path = join_path(results_dir, "manifest.json");
    m = fopen(out_path, "wb");
    if (!m) die("%s: cannot write (%s)", out_path, strerror(errno));
    fputs("{\"format\": \"repspec-vectors-results\", \"schema_version\": 1, ", m);
    fprintf(m, "\"implementation\": \"repspec C99 example port%s\", \"clauses\": {",
            REPSPEC_BROKEN ? " (broken variant)" : "");
    for (ci = 0; ci < clauses->n; ci++) {
        const json *clause = &clauses->items[ci], *cases = jget(clause, "cases");
        const char *id = jstr(jget(clause, "id")), *file = jstr(jget(clause, "file"));
        st_file arrays;
        st_out out = {0, 0, NULL, NULL};
        size_t k, j, notes = 0;
        char *path;
        if (!id || !file || !cases || cases->t != J_ARR) die("%s: malformed clause entry", manifest_path);
        if (!answers_clause(clause)) continue; /* not implemented here: `check` reports it as skipped */
        path = join_path(vectors_dir, file);
        st_open(&arrays, path);
        fprintf(m, "%s", answered ? ", " : "");
        fput_json_string(m, id);
        fputs(": {\"file\": ", m);
        fput_json_string(m, file);
        fputs(", \"calls\": {", m);
        for (k = 0; k < cases->n; k++) {
            const json *case_ = &cases->items[k], *case_calls = jget(case_, "calls");
            const char *case_id = jstr(jget(case_, "id"));
            for (j = 0; case_calls && j < case_calls->n; j++) {
                const json *call = &case_calls->items[j];
                char where[128];
                call_in in;
                sprintf(where, "%.40s %.20s/call%02lu", id, case_id ? case_id : "?", (unsigned long)j);
                if (!jget(call, "outputs")) { /* the reference refused these inputs: this port does not validate */
                    fprintf(m, "%s\"%s/call%02lu\": {\"declined\": \"the C port does not validate inputs\"}",
                            notes++ ? ", " : "", case_id, (unsigned long)j);
                    continue;
                }
                in.inputs = jget(call, "inputs");
                in.arrays = &arrays;
                in.where = where;
                find_operation(jstr(jget(call, "method")))(&in, jget(call, "outputs"), &out);
                calls++;
            }
        }
        fputs("}}", m);
        free(path);
        path = join_path(results_dir, file);
        st_write(&out, path);
        free(path);
        answered++;
    }
    fputs("}}\n", m);
    if (fclose(m) != 0) die("%s: write failed", out_path);
    fprintf(stderr, "repspec_port: answered %lu calls of %lu clause(s) into %s\n", (unsigned long)calls,
            (unsigned long)answered, results_dir);
    return 0;
}
