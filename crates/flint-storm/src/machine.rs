//! One simulated machine: its MAC, SMBIOS UUID and firmware, as bench/storm's inventory knows
//! node i, and what its firmware says of itself on the wire.

use crate::shared::Shared;

pub const BIOS_BINARY: &str = "undionly.kpxe";
pub const EFI_BINARY: &str = "ipxe.efi";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Efi,
}

pub struct Machine {
    pub index: usize,
    pub mac: [u8; 6],
    pub uuid: [u8; 16],
    pub firmware: Firmware,
    rng: u64,
}

impl Machine {
    pub fn new(shared: &Shared, index: usize) -> Machine {
        let i = index as u32;
        let p = shared.prefix;
        let mac = [p[0], p[1], p[2], (i >> 16) as u8, (i >> 8) as u8, i as u8];
        // The UUID bench/storm's inventory gives node i: %08x-0000-4000-8000-%012x of i+1, i.
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(&(i + 1).to_be_bytes());
        uuid[6] = 0x40;
        uuid[8] = 0x80;
        uuid[12..].copy_from_slice(&i.to_be_bytes());
        // Spread evenly: machine i is EFI when the running count of EFI machines steps up at i.
        let p = u64::from(shared.args.efi_percent);
        let efi = (index as u64 + 1) * p / 100 > index as u64 * p / 100;
        Machine {
            index,
            mac,
            uuid,
            firmware: if efi { Firmware::Efi } else { Firmware::Bios },
            rng: 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
        }
    }

    pub fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn hexhyp(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }

    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    pub fn arch(&self) -> u16 {
        match self.firmware {
            Firmware::Bios => 0,
            Firmware::Efi => 7,
        }
    }

    /// Option 60 as ROMs send it; iPXE sends the same string.
    pub fn class(&self) -> String {
        match self.firmware {
            Firmware::Bios => "PXEClient:Arch:00000:UNDI:002001".into(),
            Firmware::Efi => "PXEClient:Arch:00007:UNDI:003016".into(),
        }
    }

    pub fn binary(&self) -> &'static str {
        match self.firmware {
            Firmware::Bios => BIOS_BINARY,
            Firmware::Efi => EFI_BINARY,
        }
    }
}
