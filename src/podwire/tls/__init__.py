"""TLS handshake insight from clear-text handshake records: SNI, versions, ciphers, ALPN,
JA3/JA3S/JA4 and the leaf certificate (TLS <= 1.2).  Nothing is decrypted."""
