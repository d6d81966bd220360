import sys

from novomap.commands.main import main

sys.exit(main())
