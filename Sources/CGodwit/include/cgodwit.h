#ifndef CGODWIT_H
#define CGODWIT_H
// C shim: what Swift can't call directly. Each declaration documents its kernel contract.
#endif
