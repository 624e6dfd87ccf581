#include "cgodwit.h"
