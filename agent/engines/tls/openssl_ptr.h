// Owning smart pointers for the OpenSSL objects the TLS engine holds.
// Internal to agent/engines/tls.
#pragma once

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

#include "agent/core/openssl_ptr.h"

namespace tapsec::tls::detail {

using core::OpenSslDeleter;
using core::OpenSslPtr;

using SslCtxPtr = OpenSslPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = OpenSslPtr<SSL, SSL_free>;
using SslSessionPtr = OpenSslPtr<SSL_SESSION, SSL_SESSION_free>;
using X509Ptr = OpenSslPtr<X509, X509_free>;
using X509StorePtr = OpenSslPtr<X509_STORE, X509_STORE_free>;
using BioPtr = OpenSslPtr<BIO, BIO_free_all>;
using core::EvpCipherCtxPtr;
using core::EvpKdfCtxPtr;
using core::EvpKdfPtr;
using core::EvpPkeyPtr;

inline void free_x509_stack(STACK_OF(X509) * chain) { sk_X509_pop_free(chain, X509_free); }
using X509StackPtr = OpenSslPtr<STACK_OF(X509), free_x509_stack>;

using core::take_openssl_errors;

}  // namespace tapsec::tls::detail
