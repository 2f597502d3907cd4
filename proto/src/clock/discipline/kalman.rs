//! The two-state (offset, drift) Kalman filter the discipline estimates with.

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Kalman {
    pub(super) theta: f64,
    pub(super) f: f64,
    pub(super) p00: f64,
    pub(super) p01: f64,
    pub(super) p11: f64,
}

impl Kalman {
    pub(super) fn predict(&mut self, dt: f64, slew: f64, q: f64, qp: f64) {
        self.theta += (self.f - slew) * dt;
        self.p00 += 2.0 * dt * self.p01 + dt * dt * self.p11 + q * dt.powi(3) / 3.0 + qp * dt;
        self.p01 += dt * self.p11 + q * dt * dt / 2.0;
        self.p11 += q * dt;
    }

    pub(super) fn update(&mut self, z: f64, r: f64) -> f64 {
        let s = self.p00 + r;
        let k0 = self.p00 / s;
        let k1 = self.p01 / s;
        let nu = z - self.theta;
        self.theta += k0 * nu;
        self.f += k1 * nu;
        let (p00, p01, p11) = (self.p00, self.p01, self.p11);
        self.p00 = (1.0 - k0) * p00;
        self.p01 = (1.0 - k0) * p01;
        self.p11 = (p11 - k1 * p01).max(0.0);
        nu
    }
}
