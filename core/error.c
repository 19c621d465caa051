/* core/error.c — texts for the MA_E* codes of core/error.h. */
#include "core/error.h"

const char *ma_strerror(int err)
{
    switch (err) {
    case MA_OK:         return "ok";
    case MA_ENOMEM:     return "out of memory";
    case MA_EINVAL:     return "invalid argument";
    case MA_ENOTFOUND:  return "not found";
    case MA_EEXISTS:    return "already exists";
    case MA_EPROTECTED: return "protected";
    case MA_ECONFLICT:  return "version conflict";
    case MA_EFULL:      return "all resident slots are protected";
    case MA_ECORRUPT:   return "corrupt or foreign data";
    case MA_EIO:        return "storage I/O error";
    case MA_ENOVERSION: return "no such version";
    case MA_EPRECOND:   return "precondition failed";
    case MA_EBUSY:      return "overloaded";
    case MA_EEMPTY:     return "nothing to attend over";
    case MA_ETOOBIG:    return "larger than the memory budget";
    default:            return "unknown error";
    }
}
