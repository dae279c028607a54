-- Digests, HMAC and public-key signature verification through libcrypto.
--
-- Written against the API common to OpenSSL 1.1.1 and 3.x. Under 3.x every
-- operation that names an algorithm by a legacy EVP_MD looks the provider
-- implementation up again (a locked hash-table walk), and EVP_DigestVerifyInit
-- also builds a fresh signature context per call. So the expensive parts are
-- done once per key here: each public key keeps one EVP_PKEY_CTX per JWS
-- algorithm, initialised for verification with its padding and digest, and a
-- verification is one EVP_Digest (with a pre-fetched EVP_MD where 3.x offers
-- EVP_MD_fetch) plus one EVP_PKEY_verify. Ed25519 has no separate digest and
-- goes through EVP_DigestVerify.
--
-- Nothing here throws once the module is loaded: failures are nil, err.
local ffi = require "ffi"

local C = ffi.C
local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_str = ffi.string
local ffi_cast = ffi.cast
local ffi_copy = ffi.copy
local byte = string.byte
local char = string.char
local sub = string.sub
local pcall = pcall
local pairs = pairs
local ipairs = ipairs
local floor = math.floor
local type = type
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
typedef struct engine_st ENGINE;
typedef struct hmac_ctx_st HMAC_CTX;

const EVP_MD *EVP_sha256(void);
const EVP_MD *EVP_sha384(void);
const EVP_MD *EVP_sha512(void);
int EVP_Digest(const void *data, size_t count, unsigned char *md,
               unsigned int *size, const EVP_MD *type, ENGINE *impl);

HMAC_CTX *HMAC_CTX_new(void);
void HMAC_CTX_free(HMAC_CTX *ctx);
int HMAC_Init_ex(HMAC_CTX *ctx, const void *key, int len, const EVP_MD *md,
                 ENGINE *impl);
int HMAC_Update(HMAC_CTX *ctx, const unsigned char *data, size_t len);
int HMAC_Final(HMAC_CTX *ctx, unsigned char *md, unsigned int *len);

int CRYPTO_memcmp(const void *a, const void *b, size_t len);

EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length);
void EVP_PKEY_free(EVP_PKEY *pkey);

EVP_PKEY_CTX *EVP_PKEY_CTX_new(EVP_PKEY *pkey, ENGINE *e);
void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
int EVP_PKEY_verify_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen,
                    const unsigned char *tbs, size_t tbslen);
int EVP_PKEY_CTX_ctrl(EVP_PKEY_CTX *ctx, int keytype, int optype, int cmd,
                      int p1, void *p2);

EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx,
                         const EVP_MD *type, ENGINE *e, EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sigret,
                     size_t siglen, const unsigned char *tbs, size_t tbslen);

void ERR_clear_error(void);

int PKCS5_PBKDF2_HMAC(const char *pass, int passlen, const unsigned char *salt,
                      int saltlen, int iter, const EVP_MD *digest, int keylen,
                      unsigned char *out);

typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm,
                     const char *properties);
]]

-- nginx links libcrypto, so its symbols are normally global in the worker.
local REQUIRED = {
    "EVP_sha256", "EVP_sha384", "EVP_sha512", "EVP_Digest",
    "HMAC_CTX_new", "HMAC_CTX_free", "HMAC_Init_ex", "HMAC_Update", "HMAC_Final",
    "CRYPTO_memcmp", "d2i_PUBKEY", "EVP_PKEY_free",
    "EVP_PKEY_CTX_new", "EVP_PKEY_CTX_free", "EVP_PKEY_verify_init",
    "EVP_PKEY_verify", "EVP_PKEY_CTX_ctrl",
    "EVP_MD_CTX_new", "EVP_MD_CTX_free", "EVP_DigestVerifyInit",
    "EVP_DigestVerify", "ERR_clear_error", "PKCS5_PBKDF2_HMAC",
}

local function has_all(lib)
    for i = 1, #REQUIRED do
        local ok = pcall(function() return lib[REQUIRED[i]] end)
        if not ok then
            return false
        end
    end
    return true
end

local lib = C
if not has_all(C) then
    lib = nil
    for _, name in ipairs({ "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
        local ok, l = pcall(ffi.load, name)
        if ok and has_all(l) then
            lib = l
            break
        end
    end
    if not lib then
        error("gwc.crypto: libcrypto symbols not found")
    end
end

local have_fetch = pcall(function() return lib.EVP_MD_fetch end)

-- Constants shared by OpenSSL 1.1.1 and 3.x. The EVP_PKEY_OP_* bits differ
-- between them, so every ctrl passes optype -1 (any operation).
local EVP_PKEY_RSA = 6
local EVP_PKEY_CTRL_MD = 1
local EVP_PKEY_ALG_CTRL = 0x1000
local EVP_PKEY_CTRL_RSA_PADDING = EVP_PKEY_ALG_CTRL + 1
local EVP_PKEY_CTRL_RSA_PSS_SALTLEN = EVP_PKEY_ALG_CTRL + 2
local EVP_PKEY_CTRL_RSA_MGF1_MD = EVP_PKEY_ALG_CTRL + 5
local RSA_PKCS1_PADDING = 1
local RSA_PKCS1_PSS_PADDING = 6

local function get_md(name, legacy)
    if have_fetch then
        local md = lib.EVP_MD_fetch(nil, name, nil)
        if md ~= nil then
            -- Held for the life of the process; never freed.
            return md
        end
    end
    return legacy()
end

local MD = {
    sha256 = get_md("SHA256", lib.EVP_sha256),
    sha384 = get_md("SHA384", lib.EVP_sha384),
    sha512 = get_md("SHA512", lib.EVP_sha512),
}
local MD_LEN = { sha256 = 32, sha384 = 48, sha512 = 64 }

-- Scratch buffers: the worker is single-threaded and nothing below yields
-- between filling and reading them.
local md_buf = ffi_new("unsigned char[64]")
local md_len = ffi_new("unsigned int[1]")
local der_buf = ffi_new("unsigned char[160]")
local der_ptr = ffi_new("const unsigned char *[1]")
local uchar_ptr = ffi.typeof("const unsigned char *")

local EVP_Digest = lib.EVP_Digest
local EVP_PKEY_verify = lib.EVP_PKEY_verify
local ERR_clear_error = lib.ERR_clear_error

local function digest(name, data)
    local md = MD[name]
    if not md or type(data) ~= "string" then
        return nil, "bad digest arguments"
    end
    if EVP_Digest(data, #data, md_buf, md_len, md, nil) ~= 1 then
        ERR_clear_error()
        return nil, "digest failed"
    end
    return ffi_str(md_buf, md_len[0])
end
_M.digest = digest

function _M.sha256(data) return digest("sha256", data) end
function _M.sha384(data) return digest("sha384", data) end
function _M.sha512(data) return digest("sha512", data) end

-- Constant-time equality of two strings; only the length leaks.
local function equal(a, b)
    local n = #a
    if n ~= #b then
        return false
    end
    return lib.CRYPTO_memcmp(a, b, n) == 0
end
_M.equal = equal

local hmac_ctx_free = lib.HMAC_CTX_free

local function new_hmac_ctx(name, secret)
    local ctx = lib.HMAC_CTX_new()
    if ctx == nil then
        return nil, "out of memory"
    end
    ctx = ffi_gc(ctx, hmac_ctx_free)
    if lib.HMAC_Init_ex(ctx, secret, #secret, MD[name], nil) ~= 1 then
        ERR_clear_error()
        return nil, "HMAC init failed"
    end
    return ctx
end

-- The keyed inner and outer states are computed once by HMAC_Init_ex;
-- re-initialising with a NULL key only copies them back.
local function hmac_ctx_mac(ctx, data, len)
    if lib.HMAC_Init_ex(ctx, nil, 0, nil, nil) ~= 1
        or lib.HMAC_Update(ctx, data, len) ~= 1
        or lib.HMAC_Final(ctx, md_buf, md_len) ~= 1
    then
        ERR_clear_error()
        return nil
    end
    return md_len[0]
end

-- Password hashing for HTTP basic credentials (slow on purpose).
local pbkdf2_buf = ffi_new("unsigned char[64]")

function _M.pbkdf2_sha256(password, salt, iterations, length)
    if type(password) ~= "string" or type(salt) ~= "string" or type(iterations) ~= "number"
        or iterations < 1 or type(length) ~= "number" or length < 1 or length > 64 then
        return nil, "bad pbkdf2 arguments"
    end
    if lib.PKCS5_PBKDF2_HMAC(password, #password, salt, #salt, iterations, MD.sha256, length, pbkdf2_buf) ~= 1 then
        ERR_clear_error()
        return nil, "pbkdf2 failed"
    end
    return ffi_str(pbkdf2_buf, length)
end

function _M.hmac(name, key, data)
    if not MD[name] or type(key) ~= "string" or type(data) ~= "string" then
        return nil, "bad hmac arguments"
    end
    local ctx, err = new_hmac_ctx(name, key)
    if not ctx then
        return nil, err
    end
    local n = hmac_ctx_mac(ctx, data, #data)
    if not n then
        return nil, "HMAC failed"
    end
    return ffi_str(md_buf, n)
end

----------------------------------------------------------------------------
-- DER, for SubjectPublicKeyInfo built from JWK members (load time only).

local function der_len(n)
    if n < 0x80 then
        return char(n)
    elseif n < 0x100 then
        return char(0x81, n)
    elseif n < 0x10000 then
        return char(0x82, floor(n / 256), n % 256)
    end
    return char(0x83, floor(n / 65536), floor(n / 256) % 256, n % 256)
end

local function der(tag, body)
    return char(tag) .. der_len(#body) .. body
end

-- A big-endian magnitude without its leading zero bytes (one kept for zero).
local function without_leading_zeros(bytes)
    local i = 1
    while i < #bytes and byte(bytes, i) == 0 do
        i = i + 1
    end
    return sub(bytes, i)
end

-- Unsigned big-endian magnitude as a DER INTEGER.
local function der_uint(bytes)
    bytes = without_leading_zeros(bytes)
    if bytes == "" then
        bytes = "\0"
    end
    if byte(bytes, 1) >= 0x80 then
        bytes = "\0" .. bytes
    end
    return der(0x02, bytes)
end

local function spki(alg_id, key_bits)
    return der(0x30, der(0x30, alg_id) .. der(0x03, "\0" .. key_bits))
end

local OID_RSA = "\6\9\42\134\72\134\247\13\1\1\1"    -- 1.2.840.113549.1.1.1
local OID_EC = "\6\7\42\134\72\206\61\2\1"           -- 1.2.840.10045.2.1
local OID_ED25519 = "\6\3\43\101\112"                -- 1.3.101.112
local DER_NULL = "\5\0"

local CURVES = {
    ["P-256"] = { oid = "\6\8\42\134\72\206\61\3\1\7", size = 32, alg = "ES256" },
    ["P-384"] = { oid = "\6\5\43\129\4\0\34", size = 48, alg = "ES384" },
    ["P-521"] = { oid = "\6\5\43\129\4\0\35", size = 66, alg = "ES512" },
}
_M.CURVES = CURVES

local pkey_free = lib.EVP_PKEY_free

local function load_spki(der_bytes)
    der_ptr[0] = ffi_cast(uchar_ptr, der_bytes)
    local pkey = lib.d2i_PUBKEY(nil, der_ptr, #der_bytes)
    if pkey == nil then
        ERR_clear_error()
        return nil
    end
    return ffi_gc(pkey, pkey_free)
end

----------------------------------------------------------------------------
-- Verification contexts.

local pkey_ctx_free = lib.EVP_PKEY_CTX_free

local function verify_ctx(pkey, md, pad, salt)
    local ctx = lib.EVP_PKEY_CTX_new(pkey, nil)
    if ctx == nil then
        ERR_clear_error()
        return nil
    end
    ctx = ffi_gc(ctx, pkey_ctx_free)
    local ctrl = lib.EVP_PKEY_CTX_ctrl
    local ok = lib.EVP_PKEY_verify_init(ctx) == 1
    if ok and pad then
        ok = ctrl(ctx, EVP_PKEY_RSA, -1, EVP_PKEY_CTRL_RSA_PADDING, pad, nil) > 0
    end
    ok = ok and ctrl(ctx, -1, -1, EVP_PKEY_CTRL_MD, 0, ffi_cast("void *", md)) > 0
    if ok and salt then
        ok = ctrl(ctx, -1, -1, EVP_PKEY_CTRL_RSA_PSS_SALTLEN, salt, nil) > 0
            and ctrl(ctx, -1, -1, EVP_PKEY_CTRL_RSA_MGF1_MD, 0,
                     ffi_cast("void *", md)) > 0
    end
    if not ok then
        ERR_clear_error()
        return nil
    end
    return ctx
end

-- Per JWS algorithm: digest name, and for RSA the padding mode.
local RSA_ALGS = {
    RS256 = { "sha256", RSA_PKCS1_PADDING },
    RS384 = { "sha384", RSA_PKCS1_PADDING },
    RS512 = { "sha512", RSA_PKCS1_PADDING },
    PS256 = { "sha256", RSA_PKCS1_PSS_PADDING },
    PS384 = { "sha384", RSA_PKCS1_PSS_PADDING },
    PS512 = { "sha512", RSA_PKCS1_PSS_PADDING },
}
local EC_MD = { ES256 = "sha256", ES384 = "sha384", ES512 = "sha512" }
local HMAC_MD = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }

local function digest_into_buf(md, data, len)
    if EVP_Digest(data, len, md_buf, md_len, md, nil) ~= 1 then
        ERR_clear_error()
        return nil
    end
    return md_len[0]
end

local Key = {}
Key.__index = Key

-- Verifies sig over the first len bytes of data (the JWS signing input is a
-- prefix of the token, so it is never copied out). Returns true, or false
-- and a reason; an algorithm this key cannot serve is "alg".
function Key:verify(alg, data, len, sig)
    local ctx = self.ctxs[alg]
    if not ctx then
        return false, "alg"
    end
    local kind = self.kind
    if kind == "hmac" then
        local n = hmac_ctx_mac(ctx, data, len)
        if not n or n ~= #sig or lib.CRYPTO_memcmp(md_buf, sig, n) ~= 0 then
            return false, "signature"
        end
        return true
    elseif kind == "okp" then
        if #sig ~= 64
            or lib.EVP_DigestVerifyInit(ctx, nil, nil, nil, self.pkey) ~= 1
            or lib.EVP_DigestVerify(ctx, sig, 64, data, len) ~= 1
        then
            ERR_clear_error()
            return false, "signature"
        end
        return true
    end
    local n = digest_into_buf(self.mds[alg], data, len)
    if not n then
        return false, "digest"
    end
    local siglen
    if kind == "ec" then
        siglen = self.ecdsa_der(sig)
        if not siglen then
            return false, "signature"
        end
        sig = der_buf
    else
        siglen = #sig
    end
    if EVP_PKEY_verify(ctx, sig, siglen, md_buf, n) ~= 1 then
        ERR_clear_error()
        return false, "signature"
    end
    return true
end

-- Whether this key can verify alg at all.
function Key:supports(alg)
    return self.ctxs[alg] ~= nil
end

local function new_key(kind, pkey, bits)
    return setmetatable({ kind = kind, pkey = pkey, bits = bits, ctxs = {}, mds = {} }, Key)
end

-- EVP_PKEY_bits became a macro in 3.0, so count the modulus here.
local function modulus_bits(n)
    n = without_leading_zeros(n)
    local top, bits = byte(n, 1), 0
    while top > 0 do
        bits = bits + 1
        top = floor(top / 2)
    end
    return (#n - 1) * 8 + bits
end

-- RSA public key from the big-endian modulus and exponent bytes.
function _M.rsa_key(n, e)
    if type(n) ~= "string" or type(e) ~= "string" or #n == 0 or #e == 0 then
        return nil, "bad RSA key members"
    end
    local body = der(0x30, der_uint(n) .. der_uint(e))
    local pkey = load_spki(spki(OID_RSA .. DER_NULL, body))
    if not pkey then
        return nil, "invalid RSA key"
    end
    local bits = modulus_bits(n)
    -- RFC 7518 3.3: keys of 2048 bits or larger MUST be used.
    if bits < 2048 then
        return nil, "RSA key shorter than 2048 bits"
    end
    local key = new_key("rsa", pkey, bits)
    for alg, spec in pairs(RSA_ALGS) do
        local md = MD[spec[1]]
        local pss = spec[2] == RSA_PKCS1_PSS_PADDING
        local ctx = verify_ctx(pkey, md, spec[2], pss and MD_LEN[spec[1]] or nil)
        if not ctx then
            return nil, "cannot set up " .. alg
        end
        key.ctxs[alg] = ctx
        key.mds[alg] = md
    end
    return key
end

-- JWS carries ECDSA signatures as r || s, each exactly the curve size;
-- OpenSSL wants a DER ECDSA-Sig-Value. Written into der_buf, returns its
-- length or nil for a signature of the wrong size.
local function ecdsa_der_writer(size)
    local total_raw = size * 2
    return function(sig)
        if #sig ~= total_raw then
            return nil
        end
        local p = ffi_cast(uchar_ptr, sig)
        local rs, ss = 0, size
        -- Leading zero bytes are not part of a DER INTEGER.
        while rs < size - 1 and p[rs] == 0 do
            rs = rs + 1
        end
        while ss < total_raw - 1 and p[ss] == 0 do
            ss = ss + 1
        end
        local rlen, slen = size - rs, total_raw - ss
        local rpad = p[rs] >= 0x80 and 1 or 0
        local spad = p[ss] >= 0x80 and 1 or 0
        local body = 4 + rlen + rpad + slen + spad
        local o
        der_buf[0] = 0x30
        if body < 0x80 then
            der_buf[1] = body
            o = 2
        else
            der_buf[1] = 0x81
            der_buf[2] = body
            o = 3
        end
        der_buf[o] = 0x02
        der_buf[o + 1] = rlen + rpad
        o = o + 2
        if rpad == 1 then
            der_buf[o] = 0
            o = o + 1
        end
        ffi_copy(der_buf + o, p + rs, rlen)
        o = o + rlen
        der_buf[o] = 0x02
        der_buf[o + 1] = slen + spad
        o = o + 2
        if spad == 1 then
            der_buf[o] = 0
            o = o + 1
        end
        ffi_copy(der_buf + o, p + ss, slen)
        return o + slen
    end
end

-- EC public key on a NIST curve from the x and y coordinate bytes.
function _M.ec_key(crv, x, y)
    local curve = CURVES[crv]
    if not curve then
        return nil, "unsupported curve"
    end
    if type(x) ~= "string" or type(y) ~= "string"
        or #x ~= curve.size or #y ~= curve.size
    then
        return nil, "bad EC coordinates"
    end
    -- d2i_PUBKEY rejects a point that is not on the curve.
    local pkey = load_spki(spki(OID_EC .. curve.oid, "\4" .. x .. y))
    if not pkey then
        return nil, "invalid EC key"
    end
    local key = new_key("ec", pkey, curve.size * 8)
    local alg = curve.alg
    local md = MD[EC_MD[alg]]
    local ctx = verify_ctx(pkey, md)
    if not ctx then
        return nil, "cannot set up " .. alg
    end
    key.ctxs[alg] = ctx
    key.mds[alg] = md
    key.ecdsa_der = ecdsa_der_writer(curve.size)
    return key
end

local md_ctx_free = lib.EVP_MD_CTX_free

-- Ed25519 public key from its 32 bytes.
function _M.ed25519_key(x)
    if type(x) ~= "string" or #x ~= 32 then
        return nil, "bad Ed25519 key"
    end
    local pkey = load_spki(der(0x30, der(0x30, OID_ED25519) .. der(0x03, "\0" .. x)))
    if not pkey then
        return nil, "invalid Ed25519 key"
    end
    local ctx = lib.EVP_MD_CTX_new()
    if ctx == nil then
        return nil, "out of memory"
    end
    local key = new_key("okp", pkey, 256)
    key.ctxs.EdDSA = ffi_gc(ctx, md_ctx_free)
    return key
end

-- Symmetric key for HS256/384/512.
function _M.hmac_key(secret)
    if type(secret) ~= "string" or #secret == 0 then
        return nil, "empty HMAC secret"
    end
    local key = new_key("hmac", nil, #secret * 8)
    for alg, name in pairs(HMAC_MD) do
        local ctx, err = new_hmac_ctx(name, secret)
        if not ctx then
            return nil, err
        end
        key.ctxs[alg] = ctx
    end
    return key
end

_M.have_md_fetch = have_fetch

return _M
