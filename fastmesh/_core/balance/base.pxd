# Balancer: the one interface every load-balancing algorithm implements (HAProxy's lb_ops idea).
# Endpoints are indexes 0..n-1 into the owning cluster's endpoint arrays; events keep the balancer's
# state current so that pick() is cheap and never scans Python objects.

cdef class Balancer:
    cdef int n                    # number of endpoints
    cdef int n_up                 # endpoints currently eligible for pick()
    cdef int *weights             # configured weight per endpoint (>= 1)
    cdef unsigned char *up        # 1 if the endpoint may be picked, 0 if marked down
    cdef int *active              # in-flight connections/requests per endpoint
    cdef unsigned long long rng   # xorshift64* state for algorithms that draw random numbers

    # Index of the endpoint to use, or -1 when none is up. `avoid` (-1 for none) is an endpoint the
    # caller just failed on: pick it only if it is the only one up.
    cdef int pick(self, int avoid) noexcept
    # Endpoint i became eligible (health/ejection ended) or ineligible.
    cdef void endpoint_up(self, int i) noexcept
    cdef void endpoint_down(self, int i) noexcept
    # A connection/request to endpoint i started or ended.
    cdef void request_start(self, int i) noexcept
    cdef void request_end(self, int i) noexcept
    # Next pseudo-random 64-bit number (xorshift64*).
    cdef unsigned long long next_random(self) noexcept
