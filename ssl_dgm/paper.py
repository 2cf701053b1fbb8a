"""The numbers reports compare against: Kingma et al. (2014), Table 1.

Test error (%) on MNIST with N labels; "m1" is the paper's M1+TSVM, whose
place ssl_dgm's M1 + head takes (label spreading by default, or a softmax head).
"""

TABLE1 = {"m1": {100: 11.82, 600: 5.72, 1000: 4.24, 3000: 3.49},
          "m2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
          "m1m2": {100: 3.33, 600: 2.59, 1000: 2.40, 3000: 2.18}}
NAMES = {"m1": "M1+TSVM", "m2": "M2", "m1m2": "M1+M2"}
